//! The shard's inbox task: waits on the shard's eventfd through io_uring and drains the
//! mesh queues. Idle, it is one pending read: no spinning, no timer.

use std::{fs::File, os::fd::FromRawFd, rc::Rc};

use super::Shard;

/// Messages handled before yielding to connection tasks, so a flood of cross-shard traffic
/// cannot starve this shard's own sockets.
const BUDGET: usize = 1024;

/// Runs until the process exits.
pub async fn run(shard: Rc<Shard>) {
    let me = shard.id;
    // SAFETY: `dup` of the mesh's eventfd, which stays open for the life of the process
    // (the mesh outlives every shard); the duplicate is owned by `file` alone.
    let fd = unsafe { libc::dup(shard.shared.mesh.eventfd(me)) };
    if fd < 0 {
        tracing::error!(
            shard = me.0,
            "cannot dup eventfd; cross-shard messages will not arrive"
        );
        return;
    }
    // SAFETY: `fd` is a fresh, valid descriptor owned by nobody else.
    let file = tokio_uring::fs::File::from_std(unsafe { File::from_raw_fd(fd) });
    let mut buf = vec![0u8; 8];
    loop {
        shard.shared.mesh.arm(me);
        loop {
            let n = shard.shared.mesh.drain(me, BUDGET, |m| shard.handle_msg(m));
            shard.pump_local();
            if n < BUDGET {
                break;
            }
            tokio::task::yield_now().await;
        }
        let (res, b) = file.read_at(buf, 0).await;
        buf = b;
        if let Err(e) = res {
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!(shard = me.0, cause = %e, "eventfd read failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
