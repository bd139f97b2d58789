//! Reading and writing the gateway's files: size-limited reads, atomic
//! writes (temporary file, fsync, rename, fsync of the directory), and
//! owner-only permissions for secrets.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file operation that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot write", …).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file is larger than allowed for its kind.
    #[error("{path} is {size} bytes, larger than the limit of {limit} bytes for this kind of file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A secret key file can be read by other users.
    #[error(
        "{path} has mode {mode:o}; secret key files must not be readable by group or others (chmod 600)"
    )]
    InsecureMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file exists and overwriting was not asked for.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole file of at most `limit` bytes, checking the size before reading.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let f = File::open(path).map_err(io_err("cannot open", path))?;
    let size = f.metadata().map_err(io_err("cannot stat", path))?.len();
    if size > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("cannot read", path))?;
    if buf.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}

/// Reads a UTF-8 text file of at most `limit` bytes.
pub fn read_text(path: &Path, limit: u64) -> Result<String, FileError> {
    let bytes = read_limited(path, limit)?;
    String::from_utf8(bytes).map_err(|_| FileError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, "file is not UTF-8 text"),
    })
}

/// Reads a secret key file: refuses files readable by group or others.
pub fn read_secret(path: &Path, limit: u64) -> Result<zeroize::Zeroizing<String>, FileError> {
    let meta = fs::metadata(path).map_err(io_err("cannot open", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::InsecureMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    read_text(path, limit).map(zeroize::Zeroizing::new)
}

/// Writes `data` to `path` atomically with the given mode: a temporary file
/// in the same directory, fsync, rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, overwrite: bool) -> Result<(), FileError> {
    if !overwrite && path.exists() {
        return Err(FileError::Exists(path.to_path_buf()));
    }
    let dir = parent_dir(path);
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("cannot create", &tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("cannot set permissions of", &tmp))?;
        f.write_all(data).map_err(io_err("cannot write", &tmp))?;
        f.sync_all().map_err(io_err("cannot sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("cannot rename into", path))?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so that a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync directory", dir))
}

/// The directory a path is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates a directory (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("cannot create directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_atomic(&p, b"x", 0o600, false).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(
            write_atomic(&p, b"y", 0o600, false),
            Err(FileError::Exists(_))
        ));
        assert_eq!(read_secret(&p, 10).unwrap().as_str(), "x");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_secret(&p, 10), Err(FileError::InsecureMode { .. })));
        assert!(matches!(read_limited(&p, 0), Err(FileError::TooLarge { .. })));
    }
}
