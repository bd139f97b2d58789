//! The Unix socket: creation (mode 0660), the peer-credential check of every
//! connection, limits and graceful shutdown.

use std::convert::Infallible;
use std::ffi::CString;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::unistd::{Gid, Group, Uid, User};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::router::{self, Ctx};
use super::types::Caller;
use super::{ApiLimits, ApiService};

/// Who may use the socket. A connecting process is allowed if its uid is in
/// `users`, or its primary gid or a supplementary group of its user (from the
/// group database) is in `groups`, or — with `allow_own_uid`, the default —
/// it runs as the daemon's own user. Root is not allowed implicitly: name it
/// (`users = ["root"]`) if an operator's root shell should use the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Allowed user ids.
    pub users: Vec<u32>,
    /// Allowed group ids.
    pub groups: Vec<u32>,
    /// Whether the daemon's own user is allowed (for `konvertctl` run as the service user).
    pub allow_own_uid: bool,
}

/// A user or group name of the policy that cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// No such user in the user database.
    #[error("api access: unknown user {0:?}")]
    UnknownUser(String),
    /// No such group in the group database.
    #[error("api access: unknown group {0:?}")]
    UnknownGroup(String),
    /// The user or group database could not be read.
    #[error("api access: cannot look up {name:?}: {source}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// Why.
        source: nix::Error,
    },
}

impl AccessPolicy {
    /// Allows these uids and gids and the daemon's own user.
    pub fn new(users: Vec<u32>, groups: Vec<u32>) -> Self {
        Self {
            users,
            groups,
            allow_own_uid: true,
        }
    }

    /// Resolves user and group names (or decimal ids) with the system's
    /// user and group databases.
    pub fn from_names(users: &[String], groups: &[String]) -> Result<Self, PolicyError> {
        let mut uids = Vec::new();
        for name in users {
            let uid = match name.parse::<u32>() {
                Ok(n) => n,
                Err(_) => User::from_name(name)
                    .map_err(|source| PolicyError::Lookup {
                        name: name.clone(),
                        source,
                    })?
                    .ok_or_else(|| PolicyError::UnknownUser(name.clone()))?
                    .uid
                    .as_raw(),
            };
            uids.push(uid);
        }
        let mut gids = Vec::new();
        for name in groups {
            let gid = match name.parse::<u32>() {
                Ok(n) => n,
                Err(_) => Group::from_name(name)
                    .map_err(|source| PolicyError::Lookup {
                        name: name.clone(),
                        source,
                    })?
                    .ok_or_else(|| PolicyError::UnknownGroup(name.clone()))?
                    .gid
                    .as_raw(),
            };
            gids.push(gid);
        }
        Ok(Self::new(uids, gids))
    }

    /// Whether a caller is allowed. May read the user and group databases
    /// (blocking): call it off the async threads.
    pub fn allows(&self, caller: &Caller) -> bool {
        if self.users.contains(&caller.uid) || self.groups.contains(&caller.gid) {
            return true;
        }
        if self.allow_own_uid && caller.uid == Uid::effective().as_raw() {
            return true;
        }
        if self.groups.is_empty() {
            return false;
        }
        let Ok(Some(user)) = User::from_uid(Uid::from_raw(caller.uid)) else {
            return false;
        };
        let Ok(name) = CString::new(user.name.into_bytes()) else {
            return false;
        };
        match nix::unistd::getgrouplist(&name, Gid::from_raw(caller.gid)) {
            Ok(list) => list.iter().any(|g| self.groups.contains(&g.as_raw())),
            Err(_) => false,
        }
    }
}

/// Why the socket cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something that is not a socket is in the way.
    #[error("api socket {0}: exists and is not a socket; remove it or choose another path")]
    NotASocket(PathBuf),
    /// Another process is listening on the socket.
    #[error("api socket {0}: another process is listening on it (is konvertd already running?)")]
    InUse(PathBuf),
    /// The path has no file name or parent directory.
    #[error("api socket {0}: not a path to a file")]
    BadPath(PathBuf),
    /// A system call failed.
    #[error("api socket {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The local API server: a bound socket, not yet serving.
pub struct ApiServer<S> {
    listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
    policy: Arc<AccessPolicy>,
    ctx: Arc<Ctx<S>>,
}

impl<S> std::fmt::Debug for ApiServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BindError + '_ {
    move |source| BindError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Removes a socket file left by a process that has gone; refuses when
/// something listens on it or it is not a socket.
fn clear_stale_socket(path: &Path) -> Result<(), BindError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(BindError::InUse(path.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(io_err(path))
            }
            Err(e) => Err(io_err(path)(e)),
        },
        Ok(_) => Err(BindError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

impl<S: ApiService> ApiServer<S> {
    /// Creates the socket at `path` with `mode` (0o660 in production): bound
    /// under a temporary name, given its mode, then renamed into place, so
    /// that it is never reachable with a wider mode. A stale socket file is
    /// removed first; a live one (something accepts connections) or a file
    /// that is not a socket is refused. Must run inside a tokio runtime.
    pub fn bind(
        path: &Path,
        mode: u32,
        policy: AccessPolicy,
        service: Arc<S>,
        limits: ApiLimits,
    ) -> Result<Self, BindError> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(BindError::BadPath(path.to_owned()));
        };
        clear_stale_socket(path)?;
        let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
        clear_stale_socket(&tmp)?;
        let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io_err(&tmp))?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(path)(e));
        }
        let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
        std_listener.set_nonblocking(true).map_err(io_err(path))?;
        let listener = UnixListener::from_std(std_listener).map_err(io_err(path))?;
        tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "api: listening");
        Ok(Self {
            listener,
            path: path.to_owned(),
            inode: (meta.dev(), meta.ino()),
            policy: Arc::new(policy),
            ctx: Arc::new(Ctx { service, limits }),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown` completes; then stops accepting,
    /// removes the socket file, lets in-flight requests finish (long polls
    /// end at once with an empty list) for at most `shutdown_grace`, and
    /// returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) {
        let Self {
            listener,
            path,
            inode,
            policy,
            ctx,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(ctx.limits.max_connections.max(1)));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                () = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "api: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            tasks.spawn(connection(
                stream,
                policy.clone(),
                ctx.clone(),
                stop_rx.clone(),
                permit,
            ));
        }
        drop(listener);
        remove_if_ours(&path, inode);
        let _ = stop_tx.send(true);
        let grace = ctx.limits.shutdown_grace;
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                open = tasks.len(),
                "api: closing connections still open after the grace period"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        tracing::info!(path = %path.display(), "api: stopped");
    }
}

/// Completes once shutdown has begun (or the server is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn remove_if_ours(path: &Path, inode: (u64, u64)) {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if (m.dev(), m.ino()) == inode {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn connection<S: ApiService>(
    stream: UnixStream,
    policy: Arc<AccessPolicy>,
    ctx: Arc<Ctx<S>>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "api: no peer credentials; connection closed");
            return;
        }
    };
    let caller = Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    };
    let allowed = tokio::task::spawn_blocking(move || policy.allows(&caller))
        .await
        .unwrap_or(false);
    if allowed {
        tracing::info!(
            uid = caller.uid,
            gid = caller.gid,
            pid = caller.pid,
            "api: connection"
        );
    } else {
        tracing::warn!(
            uid = caller.uid,
            gid = caller.gid,
            pid = caller.pid,
            "api: caller refused"
        );
    }
    let limits = &ctx.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192).max(64 << 10))
        .keep_alive(allowed);
    let req_stop = stop.clone();
    let ctx2 = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = ctx2.clone();
        let stop = req_stop.clone();
        async move { Ok::<_, Infallible>(router::handle(ctx, caller, allowed, stop, req).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(uid = caller.uid, error = %e, "api: connection ended with an error");
    }
}
