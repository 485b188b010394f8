//! Entries of a directory reached through its descriptor, never through a symbolic link: what
//! netbox's stores (leases, records) are made of, so a link planted in their directories leads
//! nowhere. Every name is a single component; every open adds O_NOFOLLOW (the entry itself is
//! never followed) and a subdirectory is opened from its parent's descriptor, so no component
//! of any path is a link either.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, readlinkat, renameat, AtFlags, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{linkat, symlinkat, unlinkat, UnlinkatFlags};
use std::os::unix::fs::DirBuilderExt;

/// An open directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// For messages only.
    path: PathBuf,
}

/// Creates `path` and its parents (`mode`) unless it is a directory already: checked first,
/// as mkdir takes the parent's lock exclusively even when the answer is EEXIST.
pub fn ensure_dir_all(path: &Path, mode: u32) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

fn io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Dir {
    /// Opens `path`, whose last component must not be a link (the ones before it are the
    /// administrator's: a configured data directory may well sit behind one).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Creates (`mode`) or opens the subdirectory `name`; a link there is refused (ELOOP or
    /// ENOTDIR).
    pub fn ensure_sub(&self, name: &str, mode: u32) -> io::Result<Dir> {
        // Opened first: mkdirat takes the parent's lock exclusively even when the directory
        // exists, and every concurrent ADD passes through the same few directories.
        match self.sub(name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(io(e)),
        }
        self.sub(name)
    }

    /// Opens the subdirectory `name`.
    pub fn sub(&self, name: &str) -> io::Result<Dir> {
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// The directory's path as opened (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name`'s path (for messages).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the file `name` with `flags` (plus O_NOFOLLOW and O_CLOEXEC).
    pub fn open_file(&self, name: &str, flags: OFlag, mode: u32) -> io::Result<File> {
        let fd = openat(
            self.fd.as_fd(),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(io)?;
        Ok(File::from(fd))
    }

    /// The content of the regular file `name`.
    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_file(name, OFlag::O_RDONLY, 0)?
            .read_to_end(&mut out)?;
        Ok(out)
    }

    /// Creates `name` (which must not exist) holding `bytes`. A write that fails (a full disk)
    /// removes what it created: nothing half-written stays.
    pub fn write_new(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        let mut file =
            self.open_file(name, OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY, mode)?;
        let written = file.write_all(bytes);
        drop(file);
        if let Err(e) = written {
            let _ = self.unlink(name);
            return Err(e);
        }
        Ok(())
    }

    /// Like [`Dir::write_new`] for a temporary name: an entry already there (left by a dead
    /// writer of the same name) is removed and the write tried again. Removing first instead
    /// would take the directory's lock exclusively on every write, in directories that every
    /// concurrent ADD writes to.
    pub fn write_replacing(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        match self.write_new(name, bytes, mode) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.unlink(name)?;
                self.write_new(name, bytes, mode)
            }
            other => other,
        }
    }

    /// [`Dir::symlink`] for a temporary name, replacing a leftover as [`Dir::write_replacing`].
    pub fn symlink_replacing(&self, target: &str, name: &str) -> io::Result<()> {
        match self.symlink(target, name) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.unlink(name)?;
                self.symlink(target, name)
            }
            other => other,
        }
    }

    /// A symbolic link `name` -> `target` (fails if `name` exists).
    pub fn symlink(&self, target: &str, name: &str) -> io::Result<()> {
        symlinkat(target, self.fd.as_fd(), name).map_err(io)
    }

    /// The target of the link `name`; None when there is no such entry. An entry that is not
    /// a link is an error (EINVAL).
    pub fn readlink(&self, name: &str) -> io::Result<Option<OsString>> {
        match readlinkat(self.fd.as_fd(), name) {
            Ok(t) => Ok(Some(t)),
            Err(nix::Error::ENOENT) => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// True unless `name` is certainly absent.
    pub fn exists(&self, name: &str) -> bool {
        !matches!(
            nix::sys::stat::fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW),
            Err(nix::Error::ENOENT)
        )
    }

    /// Renames `from` (here) to `to` in `dir`, replacing it.
    pub fn rename(&self, from: &str, dir: &Dir, to: &str) -> io::Result<()> {
        renameat(self.fd.as_fd(), from, dir.fd.as_fd(), to).map_err(io)
    }

    /// A second name `to` in `dir` for `from` (fails if `to` exists).
    pub fn link(&self, from: &str, dir: &Dir, to: &str) -> io::Result<()> {
        linkat(self.fd.as_fd(), from, dir.fd.as_fd(), to, AtFlags::empty()).map_err(io)
    }

    /// Removes the entry `name` (never a directory); Ok when it is already gone.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// The names of the entries (not "." and ".."), as far as they are UTF-8.
    pub fn entries(&self) -> io::Result<Vec<String>> {
        // The descriptor's /proc link names this very directory, whatever happened to its
        // path since.
        let mut out = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))? {
            if let Ok(name) = entry?.file_name().into_string() {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Makes the directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        nix::unistd::fsync(self.fd.as_fd()).map_err(io)
    }

    /// Locks the file `name` (created if needed) exclusively, for as long as the returned file
    /// is open.
    pub fn lock(&self, name: &str) -> io::Result<File> {
        let file = self.open_file(name, OFlag::O_CREAT | OFlag::O_WRONLY, 0o644)?;
        file.lock()?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_writers_leftover_is_replaced_not_an_error() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = Dir::open(tmp.path())?;
        dir.write_new("t", b"old", 0o644)?;
        dir.write_replacing("t", b"new", 0o644)?;
        assert_eq!(dir.read("t")?, b"new");
        dir.symlink("old-target", "l")?;
        dir.symlink_replacing("new-target", "l")?;
        assert_eq!(dir.readlink("l")?, Some("new-target".into()));
        // A first write needs no leftover.
        dir.write_replacing("fresh", b"x", 0o644)?;
        assert_eq!(dir.read("fresh")?, b"x");
        Ok(())
    }

    #[test]
    fn ensure_sub_opens_an_existing_directory_and_refuses_a_link() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = Dir::open(tmp.path())?;
        dir.ensure_sub("d", 0o755)?;
        dir.ensure_sub("d", 0o755)?;
        std::os::unix::fs::symlink(tmp.path().join("d"), tmp.path().join("l"))?;
        assert!(dir.ensure_sub("l", 0o755).is_err());
        ensure_dir_all(&tmp.path().join("a/b"), 0o755)?;
        assert!(tmp.path().join("a/b").is_dir());
        Ok(())
    }
}
