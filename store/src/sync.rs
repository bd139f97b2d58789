//! Group commit: many writers, one flush and one fdatasync.
//!
//! A put is prepared (sealed, its payload appended to its hour's file,
//! record encoded) by its writer and queued, and so is a delivered
//! transition (its receipt sealed); other changes are applied to sled by
//! their writer. Either way the writer then takes a ticket and waits.
//! Three roles are taken by waiting writers, one writer each at a time:
//! - the *preparer* (in `Fdatasync` mode) takes all queued puts and
//!   `fdatasync`s the payload files written since the last time, so that no
//!   record reaches sled before its payload is on disk;
//! - the *applier* takes prepared jobs (at most `MAX_GROUP`) and applies
//!   them as one group (`Store::apply_puts`: puts, then deliveries);
//! - the *syncer* notes the highest ticket whose changes are all in sled
//!   (plain commits are issued after their writes; queued puts once their
//!   group is applied), calls `sled::Db::flush()` (which writes sled's
//!   buffers with `sync_file_range`, no fsync), then `fdatasync`s sled's log
//!   file, any new blob files and their directory. When that returns, all
//!   tickets up to the noted one are durable and exactly those writers are
//!   woken (plus up to three others, to take the roles).
//!
//! Taken by different threads, the three run at the same time on consecutive
//! groups (payloads of group n+2, records of n+1, sled sync of n); the one
//! service thread of async writers takes them in turn. That thread defers
//! a sync of fewer than [`GATHER`] writes by up to [`GATHER_WAIT`] while
//! the last sync covered more than one write (concurrent writers: more are
//! on their way), taking the other roles meanwhile; a lone writer never
//! waits. With many writers announced it also holds new puts back while
//! it gathers (it prepares, applies and syncs the group together; see
//! `State::holding`). Either way
//! writers that arrive during a sync join the next group, so under load one
//! sync serves a whole group. A failed write, flush or sync poisons the
//! store: every later write returns [`Error::Poisoned`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::Thread;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::model::Put;
use crate::store::Job;

/// How the leader applies queued puts: results by ticket.
pub(crate) type ApplyFn<'a> = dyn Fn(Vec<(u64, Job)>) -> Result<Vec<(u64, Result<Put>)>> + 'a;

thread_local! {
    /// This thread is one of the group commit's service threads (it looks
    /// for the next role itself after finishing one).
    static IS_SERVER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Most puts applied and synced as one group.
const MAX_GROUP: usize = 512;

/// A service thread defers a sync of fewer than this many writes ...
const GATHER: u64 = 16;

/// ... by at most this long, while the last sync covered more than one
/// write (writers are concurrent, so more are on their way): one flush +
/// fdatasync then serves more of them. A lone writer never waits.
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_micros(1500);

/// With at least this many concurrent writers announced
/// ([`GroupCommit::set_writers`]) ...
pub(crate) const BUSY_WRITERS: u64 = 64;

/// ... a sync waits for this many writes ...
const BUSY_GATHER: u64 = 64;

/// ... or this long: with that many messages in flight their latency is
/// queueing for the CPU, and fewer syncs leave more of it to them (the
/// idea of PostgreSQL's `commit_delay` / `commit_siblings`). End to end at
/// 256 in flight, 2x the writes per sync and 6-9 % less CPU per message;
/// applied at 16 in flight, the same wait cost a quarter of the rate.
const BUSY_GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(4);

/// How many writes a service thread gathers before a sync, and for how
/// long at most, with `writers` concurrent writers announced.
fn gathering(writers: u64) -> (u64, std::time::Duration) {
    if writers >= BUSY_WRITERS {
        (BUSY_GATHER, BUSY_GATHER_WAIT)
    } else {
        (GATHER, GATHER_WAIT)
    }
}

/// How hard the store works to make an acknowledged write survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// An acknowledged write has been `fdatasync`ed (group commit): it survives
    /// a process kill and a power loss. The default.
    #[default]
    Fdatasync,
    /// Only sled's `flush()` (`sync_file_range`): survives a process kill but
    /// NOT a power loss or kernel crash. For benchmarks and throwaway stores.
    DangerousFlushOnly,
    /// Nothing is flushed on acknowledgment (sled flushes in the background
    /// every 500 ms): a process kill can lose acknowledged writes. Benchmarks only.
    DangerousNoSync,
}

/// Counters of the group commit.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub syncs: AtomicU64,
    /// Payload-file syncs of queued puts (the preparer's).
    pub payload_syncs: AtomicU64,
    pub acked: AtomicU64,
    pub sync_nanos: AtomicU64,
}

struct State {
    /// Tickets handed out (writers that finished their sled write).
    issued: u64,
    /// Highest ticket made durable.
    durable: u64,
    /// A writer is making the payloads of queued puts durable.
    preparing: bool,
    /// First ticket of the puts whose payloads are being synced.
    prep_inflight: Option<u64>,
    /// Puts whose payloads are durable, waiting to be applied.
    ready: Vec<(u64, Job)>,
    /// A writer is applying a group of queued puts.
    applying: bool,
    /// First ticket of the group being applied.
    inflight: Option<u64>,
    /// A writer is syncing.
    syncing: bool,
    /// Writes the last sync made durable.
    last_group: u64,
    /// A service thread deferred the due sync until then (see [`GATHER`]).
    sync_defer_until: Option<std::time::Instant>,
    poisoned: bool,
    /// Prepared puts waiting for the next leader.
    queue: Vec<(u64, Job)>,
    /// Results of applied puts, by ticket, until their writer picks them up.
    results: HashMap<u64, Result<Put>>,
    /// Writers waiting, by ticket. A finished sync wakes exactly the writers
    /// it made durable plus the ones needed to take the free roles: waking
    /// all of them (a condition variable's `notify_all`) costs a context
    /// switch per waiting writer per group.
    waiters: BTreeMap<u64, Waiter>,
    /// Service threads parked for lack of work (see [`GroupCommit::serve_once`]).
    idle_servers: Vec<Thread>,
    /// Service threads exist: they take the roles, waiting writers need not.
    servers: bool,
}

/// A writer waiting for its ticket to become durable.
enum Waiter {
    /// A thread in [`GroupCommit::commit_with`], parked.
    Thread(Thread),
    /// A task awaiting [`GroupCommit::commit_async`]: the result is sent.
    Task(oneshot::Sender<Result<Option<Put>>>),
    /// A task awaiting [`GroupCommit::sync_async`]: told when its ticket is durable.
    Synced(oneshot::Sender<Result<()>>),
}

/// What a service thread did in [`GroupCommit::serve_once`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// It took a role; there may be more work.
    Worked,
    /// Nothing to do: it is registered as idle and should park (at most
    /// this long when a deferred sync falls due then).
    Idle(Option<std::time::Duration>),
    /// The store is poisoned: the thread should stop.
    Stop,
}

impl State {
    /// Roles nobody holds that have work waiting: making queued payloads
    /// durable, applying ready puts, syncing what is applied.
    fn free_roles_with_work(&self) -> usize {
        usize::from(!self.preparing && !self.queue.is_empty())
            + usize::from(!self.applying && !self.ready.is_empty())
            + usize::from(!self.syncing && self.applied() > self.durable)
    }

    fn new() -> Self {
        State {
            issued: 0,
            durable: 0,
            preparing: false,
            prep_inflight: None,
            ready: Vec::new(),
            applying: false,
            inflight: None,
            syncing: false,
            last_group: 0,
            sync_defer_until: None,
            poisoned: false,
            queue: Vec::new(),
            results: HashMap::new(),
            waiters: BTreeMap::new(),
            idle_servers: Vec::new(),
            servers: false,
        }
    }

    /// Whether the service threads hold back new puts, gathering writes for
    /// the next sync (see [`GATHER`]): with concurrent writers (the last
    /// sync covered more than one write) and fewer writes waiting than
    /// `gather`, until the deadline (set at the first check). Preparing
    /// each put as it came made one payload `fdatasync` per one or two
    /// puts while the sync waited for the group: five times as many as
    /// syncs, and a wake-up of the service thread per put.
    fn holding(&mut self, writers: u64, now: std::time::Instant) -> Hold {
        if self.queue.is_empty()
            || !self.servers
            || self.poisoned
            || self.last_group <= 1
            || writers < BUSY_WRITERS
        {
            return Hold::Off;
        }
        let (gather, wait) = gathering(writers);
        if self.issued - self.durable >= gather {
            return Hold::Off;
        }
        if self.preparing || self.applying || self.syncing {
            // A service thread is busy and looks again when it is done:
            // the wait for more writes starts then, not now (a group
            // gathered during the previous sync would be cut short).
            return Hold::On;
        }
        match self.sync_defer_until {
            Some(until) if now < until => Hold::On,
            Some(_) => Hold::Off,
            None => {
                self.sync_defer_until = Some(now + wait);
                Hold::Started
            }
        }
    }

    /// Every ticket up to this one has its changes in sled: tickets of plain
    /// commits are issued after their writes; queued puts are in sled once
    /// their group has been applied.
    fn applied(&self) -> u64 {
        [
            self.inflight,
            self.ready.first().map(|j| j.0),
            self.prep_inflight,
            self.queue.first().map(|j| j.0),
        ]
        .into_iter()
        .flatten()
        .min()
        .map_or(self.issued, |t| t - 1)
    }
}

/// [`State::holding`]: whether new puts wait for more to join them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hold {
    /// No: take the roles now.
    Off,
    /// Yes, from now on: an idle service thread is woken once to wait for
    /// the deadline.
    Started,
    /// Yes, and a service thread is already waiting for the deadline.
    On,
}

/// The files sled writes to, opened once so that the leader can fsync them.
struct SyncFiles {
    dir: PathBuf,
    log: File,
    blobs_dir: PathBuf,
    synced_blobs: HashSet<std::ffi::OsString>,
}

/// The group-commit coordinator.
pub(crate) struct GroupCommit {
    mode: SyncMode,
    state: Mutex<State>,
    files: Mutex<SyncFiles>,
    pub(crate) counters: Counters,
    fail_next: AtomicBool,
    /// How many writers the caller expects at once (a hint; see [`BUSY_WRITERS`]).
    writers: AtomicU64,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("mode", &self.mode).finish()
    }
}

impl GroupCommit {
    /// `sled_dir` is sled's directory (holding `db`, `conf`, `blobs/`).
    pub(crate) fn new(mode: SyncMode, sled_dir: &Path) -> Result<Self> {
        let log_path = sled_dir.join("db");
        let log = File::open(&log_path).map_err(|e| Error::io(&log_path, e))?;
        Ok(GroupCommit {
            mode,
            state: Mutex::new(State::new()),
            files: Mutex::new(SyncFiles {
                dir: sled_dir.to_path_buf(),
                log,
                blobs_dir: sled_dir.join("blobs"),
                synced_blobs: HashSet::new(),
            }),
            counters: Counters::default(),
            fail_next: AtomicBool::new(false),
            writers: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent counters behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn mode(&self) -> SyncMode {
        self.mode
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.lock().poisoned
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.is_poisoned() {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Make the next sync fail (fault injection for tests).
    pub(crate) fn fail_next_sync(&self) {
        self.fail_next.store(true, Ordering::SeqCst);
    }

    /// Queue `job` (a prepared put) or, with `None`, just wait for a sync
    /// covering every write already applied. Waiting writers take turns in
    /// three roles that run at the same time: `prepare` (in `Fdatasync` mode:
    /// make the payloads of all queued puts durable), `apply` (write a group
    /// of at most `MAX_GROUP` prepared puts to sled) and the sync (flush +
    /// fdatasync of sled). Every caller passes the same functions, since any
    /// of them may take a role.
    pub(crate) fn commit_with(
        &self,
        db: &sled::Db,
        job: Option<Job>,
        prepare: &dyn Fn() -> Result<()>,
        apply: &ApplyFn<'_>,
    ) -> Result<Option<Put>> {
        let mut st = self.lock();
        st.issued += 1;
        let ticket = st.issued;
        let queued = job.is_some();
        if let Some(j) = job {
            st.queue.push((ticket, j));
        }
        loop {
            if st.poisoned {
                return Err(Error::Poisoned);
            }
            if st.durable >= ticket {
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                if queued {
                    return match st.results.remove(&ticket) {
                        Some(r) => r.map(Some),
                        // Cannot happen: every queued job gets a result.
                        None => Err(Error::Poisoned),
                    };
                }
                return Ok(None);
            }
            let worked;
            (st, worked) = self.take_role(st, db, prepare, apply);
            if worked {
                continue;
            }
            st.waiters.insert(ticket, Waiter::Thread(std::thread::current()));
            drop(st);
            std::thread::park();
            st = self.lock();
            st.waiters.remove(&ticket);
        }
    }

    /// Queue `job` (a prepared put) for the service threads and return at
    /// once; the receiver gets its result when it is durable. Used by async
    /// writers, which must not block their executor's thread on a sync: the
    /// roles are taken by service threads ([`GroupCommit::serve_once`]),
    /// which the caller must have started.
    pub(crate) fn commit_async(&self, job: Job) -> oneshot::Receiver<Result<Option<Put>>> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if st.poisoned {
            let _ = tx.send(Err(Error::Poisoned));
            return rx;
        }
        st.issued += 1;
        let ticket = st.issued;
        st.queue.push((ticket, job));
        st.waiters.insert(ticket, Waiter::Task(tx));
        self.wake_for_new(&mut st);
        rx
    }

    /// Take a ticket covering every write applied so far and return at
    /// once; the receiver is told when it is durable (or the store poisoned).
    /// For async writers that applied their changes themselves; the roles
    /// are taken by service threads, which the caller must have started.
    pub(crate) fn sync_async(&self) -> oneshot::Receiver<Result<()>> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if st.poisoned {
            let _ = tx.send(Err(Error::Poisoned));
            return rx;
        }
        st.issued += 1;
        let ticket = st.issued;
        st.waiters.insert(ticket, Waiter::Synced(tx));
        self.wake_for_new(&mut st);
        rx
    }

    /// After an async writer's ticket: wake a service thread if it has
    /// something to do now (not while it gathers a group and is already
    /// waiting for its deadline).
    fn wake_for_new(&self, st: &mut State) {
        let n = match st.holding(self.writers.load(Ordering::Relaxed), std::time::Instant::now()) {
            Hold::On => 0,
            Hold::Started | Hold::Off => st.free_roles_with_work().min(1),
        };
        Self::wake_servers(st, n);
    }

    /// How many writers the caller has at once (messages in flight, say):
    /// with many, a sync gathers longer (see [`BUSY_WRITERS`]). A hint: it
    /// changes how long a sync may wait, never what is durable.
    pub(crate) fn set_writers(&self, n: u64) {
        self.writers.store(n, Ordering::Relaxed);
    }

    /// Called in a loop by a service thread: take a free role if there is
    /// work for it. The thread parks after `Idle` (it is unparked when work
    /// arrives) and ends after `Stop`.
    pub(crate) fn serve_once(
        &self,
        db: &sled::Db,
        prepare: &dyn Fn() -> Result<()>,
        apply: &ApplyFn<'_>,
    ) -> Served {
        IS_SERVER.set(true);
        let mut st = self.lock();
        st.servers = true;
        if st.poisoned {
            return Served::Stop;
        }
        let worked;
        (st, worked) = self.take_role(st, db, prepare, apply);
        if worked {
            return Served::Worked;
        }
        if st.poisoned {
            return Served::Stop;
        }
        // (Once: a thread woken by its timeout is still on the list.)
        let me = std::thread::current();
        if !st.idle_servers.iter().any(|t| t.id() == me.id()) {
            st.idle_servers.push(me);
        }
        let due = st
            .sync_defer_until
            .map(|u| u.saturating_duration_since(std::time::Instant::now()));
        Served::Idle(due)
    }

    /// Stop counting on service threads (they are ending): waiting writers
    /// take the roles again.
    pub(crate) fn servers_gone(&self) {
        let mut st = self.lock();
        st.servers = false;
        st.idle_servers.clear();
        self.wake(&mut st);
    }

    /// Take one free role that has work, do it and return `true`; or return
    /// `false` with the lock still held.
    fn take_role<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        db: &sled::Db,
        prepare: &dyn Fn() -> Result<()>,
        apply: &ApplyFn<'_>,
    ) -> (MutexGuard<'a, State>, bool) {
        let hold = IS_SERVER.get()
            && st.holding(self.writers.load(Ordering::Relaxed), std::time::Instant::now()) != Hold::Off;
        if !st.preparing && !st.queue.is_empty() && !hold {
            let jobs = std::mem::take(&mut st.queue);
            if self.mode == SyncMode::Fdatasync {
                // Make the payloads of all queued puts durable (one
                // fdatasync per payload file), while the previous group
                // is applied and the one before it synced.
                st.preparing = true;
                st.prep_inflight = jobs.first().map(|j| j.0);
                drop(st);
                self.counters.payload_syncs.fetch_add(1, Ordering::Relaxed);
                let res = prepare();
                st = self.lock();
                st.preparing = false;
                st.prep_inflight = None;
                if let Err(e) = res {
                    self.fail(&mut st, e);
                    return (st, true);
                }
                st.ready.extend(jobs);
                self.wake(&mut st);
                return (st, true);
            }
            st.ready.extend(jobs);
        }
        if !st.applying && !st.ready.is_empty() {
            // Apply the next group (at most MAX_GROUP puts; the rest wait
            // for the next one), while a sync of the previous may run.
            st.applying = true;
            let jobs = if st.ready.len() > MAX_GROUP {
                let rest = st.ready.split_off(MAX_GROUP);
                std::mem::replace(&mut st.ready, rest)
            } else {
                std::mem::take(&mut st.ready)
            };
            st.inflight = jobs.first().map(|j| j.0);
            drop(st);
            let res = apply(jobs);
            st = self.lock();
            st.applying = false;
            st.inflight = None;
            match res {
                Ok(results) => st.results.extend(results),
                Err(e) => {
                    self.fail(&mut st, e);
                    return (st, true);
                }
            }
            self.wake(&mut st);
            return (st, true);
        }
        let applied = st.applied();
        if !st.syncing && applied > st.durable {
            let (gather, wait) = gathering(self.writers.load(Ordering::Relaxed));
            if IS_SERVER.get() && st.last_group > 1 && applied - st.durable < gather {
                // Concurrent writers and a small group: gather a little
                // longer (taking the other roles meanwhile).
                let now = std::time::Instant::now();
                let until = *st.sync_defer_until.get_or_insert(now + wait);
                if now < until {
                    return (st, false);
                }
            }
            st.sync_defer_until = None;
            // Sync everything applied so far: one flush + fdatasync for
            // all of it.
            st.syncing = true;
            drop(st);
            let res = self.sync_now(db);
            st = self.lock();
            st.syncing = false;
            match res {
                Ok(()) => {
                    st.last_group = applied - st.durable.min(applied);
                    st.durable = st.durable.max(applied);
                }
                Err(e) => {
                    self.fail(&mut st, e);
                    return (st, true);
                }
            }
            self.wake(&mut st);
            return (st, true);
        }
        (st, false)
    }

    fn fail(&self, st: &mut State, e: Error) {
        st.poisoned = true;
        st.results.clear();
        tracing::error!(error = %e, "store write or sync failed; store poisoned");
        self.wake(st);
    }

    /// Wake (or answer) the writers whose tickets are durable (all of them
    /// once poisoned), and whoever takes the roles next: the idle service
    /// threads if there are any, else the first three other waiting writers
    /// (to sync payloads, to apply the next group, to sync sled).
    fn wake(&self, st: &mut State) {
        let done = if st.poisoned {
            std::mem::take(&mut st.waiters)
        } else {
            let rest = st.waiters.split_off(&(st.durable + 1));
            std::mem::replace(&mut st.waiters, rest)
        };
        for (ticket, w) in done {
            match w {
                Waiter::Thread(t) => t.unpark(),
                Waiter::Task(tx) => {
                    let r = if st.poisoned {
                        Err(Error::Poisoned)
                    } else {
                        self.counters.acked.fetch_add(1, Ordering::Relaxed);
                        match st.results.remove(&ticket) {
                            Some(r) => r.map(Some),
                            None => Err(Error::Poisoned),
                        }
                    };
                    // The task may have gone (its future dropped): the
                    // write stays durable all the same.
                    let _ = tx.send(r);
                }
                Waiter::Synced(tx) => {
                    let r = if st.poisoned {
                        Err(Error::Poisoned)
                    } else {
                        self.counters.acked.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    };
                    let _ = tx.send(r);
                }
            }
        }
        if st.poisoned {
            for t in std::mem::take(&mut st.idle_servers) {
                t.unpark();
            }
            return;
        }
        if st.servers {
            // A service thread that just finished a role takes the next
            // one itself; only the other free roles with work need a server.
            let roles = st.free_roles_with_work();
            let more = if IS_SERVER.get() {
                roles.saturating_sub(1)
            } else {
                roles
            };
            Self::wake_servers(st, more);
            return;
        }
        for (_, w) in st.waiters.iter().take(3) {
            if let Waiter::Thread(t) = w {
                t.unpark();
            }
        }
    }

    /// Unpark up to `n` idle service threads. Waking more than there are
    /// roles to take costs each a context switch for nothing; a server
    /// that finishes a role looks for the next before it parks, so work is
    /// never left without one.
    fn wake_servers(st: &mut State, n: usize) {
        for _ in 0..n {
            match st.idle_servers.pop() {
                Some(t) => t.unpark(),
                None => break,
            }
        }
    }

    /// Poison the store (a write to sled failed).
    pub(crate) fn poison(&self) {
        let mut st = self.lock();
        st.poisoned = true;
        self.wake(&mut st);
    }

    fn sync_now(&self, db: &sled::Db) -> Result<()> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(Error::io(
                "<injected>",
                std::io::Error::other("injected sync failure"),
            ));
        }
        let t0 = std::time::Instant::now();
        match self.mode {
            SyncMode::DangerousNoSync => {}
            SyncMode::DangerousFlushOnly => {
                db.flush()?;
            }
            SyncMode::Fdatasync => {
                db.flush()?;
                let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
                files.sync()?;
            }
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.counters.sync_nanos.fetch_add(
            u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(())
    }
}

impl SyncFiles {
    fn sync(&mut self) -> Result<()> {
        self.log
            .sync_data()
            .map_err(|e| Error::io(self.dir.join("db"), e))?;
        // Values larger than a quarter of a segment go to blob files, which
        // sled writes without fsync: fsync every new one, then their directory.
        let rd = match std::fs::read_dir(&self.blobs_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&self.blobs_dir, e)),
        };
        let mut present = HashSet::new();
        let mut new_blob = false;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(&self.blobs_dir, e))?;
            let name = ent.file_name();
            if !self.synced_blobs.contains(&name) {
                let p = ent.path();
                match File::open(&p) {
                    Ok(f) => f.sync_data().map_err(|e| Error::io(&p, e))?,
                    // Removed by sled's GC in the meantime.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(&p, e)),
                }
                new_blob = true;
            }
            present.insert(name);
        }
        self.synced_blobs = present;
        if new_blob {
            crate::keys::sync_dir(&self.blobs_dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_announced_writers_gather_longer_few_do_not() {
        for n in [0, 1, 16, BUSY_WRITERS - 1] {
            assert_eq!(gathering(n), (GATHER, GATHER_WAIT), "{n}");
        }
        for n in [BUSY_WRITERS, 256, u64::MAX] {
            assert_eq!(gathering(n), (BUSY_GATHER, BUSY_GATHER_WAIT), "{n}");
        }
        // Longer and larger, never shorter.
        assert!(BUSY_GATHER >= GATHER && BUSY_GATHER_WAIT >= GATHER_WAIT);
    }

    #[test]
    fn new_puts_are_held_for_a_group_only_with_many_writers_and_until_the_deadline() {
        let t0 = std::time::Instant::now();
        let busy = State {
            servers: true,
            last_group: 20,
            issued: 110,
            durable: 100,
            queue: vec![(110, Job::for_tests())],
            ..State::new()
        };
        // Nothing queued: nothing to hold (and no deadline set).
        let mut empty = State {
            queue: Vec::new(),
            ..busy_copy(&busy)
        };
        assert_eq!(empty.holding(256, t0), Hold::Off);
        assert_eq!(empty.sync_defer_until, None);
        // Few writers, a lone writer, no service thread: never held.
        assert_eq!(busy_copy(&busy).holding(BUSY_WRITERS - 1, t0), Hold::Off);
        assert_eq!(
            State {
                last_group: 1,
                ..busy_copy(&busy)
            }
            .holding(256, t0),
            Hold::Off
        );
        assert_eq!(
            State {
                servers: false,
                ..busy_copy(&busy)
            }
            .holding(256, t0),
            Hold::Off
        );
        assert_eq!(
            State {
                poisoned: true,
                ..busy_copy(&busy)
            }
            .holding(256, t0),
            Hold::Off
        );
        // Enough writes waiting for a group: not held.
        let mut full = State {
            issued: 100 + BUSY_GATHER,
            ..busy_copy(&busy)
        };
        assert_eq!(full.holding(256, t0), Hold::Off);
        // Many writers, a small group: held from the first look (which sets
        // the deadline) until the deadline.
        let mut st = busy;
        assert_eq!(st.holding(256, t0), Hold::Started);
        assert_eq!(st.sync_defer_until, Some(t0 + BUSY_GATHER_WAIT));
        assert_eq!(st.holding(256, t0 + BUSY_GATHER_WAIT / 2), Hold::On);
        assert_eq!(st.holding(256, t0 + BUSY_GATHER_WAIT), Hold::Off);
        // While a service thread is busy, the wait has not started yet.
        let mut syncing = State {
            syncing: true,
            ..busy_copy(&st)
        };
        syncing.sync_defer_until = None;
        assert_eq!(syncing.holding(256, t0), Hold::On);
        assert_eq!(syncing.sync_defer_until, None);
    }

    /// The counters and flags of `st` and one queued put (not its waiters).
    fn busy_copy(st: &State) -> State {
        State {
            queue: vec![(st.issued, Job::for_tests())],
            issued: st.issued,
            durable: st.durable,
            preparing: st.preparing,
            applying: st.applying,
            syncing: st.syncing,
            last_group: st.last_group,
            sync_defer_until: st.sync_defer_until,
            poisoned: st.poisoned,
            servers: st.servers,
            ..State::new()
        }
    }
}
