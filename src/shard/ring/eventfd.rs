//! Waiting on an eventfd through tokio-uring: one pending read while asleep, no spinning,
//! no timer. Used by the ring's completion loop ([`super::run::run`], the ring's own
//! eventfd) and by the inbox task ([`crate::shard::inbox`], the shard's mesh eventfd).

use std::{
    fs::File,
    io,
    os::fd::{FromRawFd, RawFd},
};

use crate::router::ShardId;

/// A duplicate of an eventfd, read through the shard's tokio-uring runtime.
pub(crate) struct EventFd {
    file: tokio_uring::fs::File,
    buf: Vec<u8>,
    shard: ShardId,
}

impl EventFd {
    /// Duplicates `fd` (which must stay open while the shard runs) for shard `shard`.
    pub(crate) fn dup(fd: RawFd, shard: ShardId) -> io::Result<EventFd> {
        // SAFETY: `dup` has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::dup(fd) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor owned by nobody else.
        let file = tokio_uring::fs::File::from_std(unsafe { File::from_raw_fd(fd) });
        Ok(EventFd {
            file,
            buf: vec![0u8; 8],
            shard,
        })
    }

    /// Waits until the eventfd is signalled, resetting its counter. A failed read is logged
    /// and followed by a 10 ms pause (so a broken descriptor cannot spin the shard).
    pub(crate) async fn wait(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let (res, b) = self.file.read_at(buf, 0).await;
        self.buf = b;
        if let Err(e) = res {
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(shard = self.shard.0, cause = %e, "eventfd read failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
