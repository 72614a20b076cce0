//! Attacker: a disk that fills. The daemon's database and mirror live on a tmpfs of
//! [`DISK_BYTES`] of their own ([`Tmpfs`], mounted at `STATE/disk`; never the machine's real
//! filesystem). For a window from 40% of the run (a fifth of it, 20 s to 5 min) a ballast file
//! leaves half of `[sync] min_free_disk_bytes` free: downloads must stop (syncs fail with the
//! floor's error) while sign-ins go on, at least one acknowledged in the window (the database
//! still writable); then the ballast goes, and the end check finds every mirror equal to Drive
//! and no partial file in `mirror/.tmp`. Without the right to mount (not root) it is skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::state::Soak;
use super::{log, pause};

/// The tmpfs' size: the state of 2,000 users, the big user's mirror and the floor fit.
const DISK_BYTES: u64 = 512 << 20;
/// `[sync] min_free_disk_bytes` of the soak.
pub(super) const MIN_FREE_DISK_BYTES: u64 = 64 << 20;

/// A tmpfs mounted for the run, unmounted on drop.
pub(super) struct Tmpfs {
    pub(super) path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs at `path` (created); `None` when this process may not mount.
    pub(super) fn mount(path: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={DISK_BYTES},mode=0700"))
            .arg("tmpfs")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Copies what is on it to `to` (kept state outlives the mount).
    pub(super) fn copy_to(&self, to: &Path) -> anyhow::Result<()> {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(self.path.join("."))
            .arg(to)
            .status()?;
        anyhow::ensure!(status.success(), "cp -a {} failed", self.path.display());
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a daemon killed a moment ago may still hold a file open.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Free bytes of the filesystem at `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) with a NUL-terminated path and a pointer to a live, zeroed struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0).then(|| s.f_bavail * s.f_frsize)
}

/// The window, once, when the state is on a tmpfs (`disk`).
pub(super) async fn disk_full(
    soak: Arc<Soak>,
    stop: CancellationToken,
    duration: Duration,
    disk: Option<PathBuf>,
) -> anyhow::Result<()> {
    let Some(disk) = disk else {
        log("disk full: skipped, no tmpfs (mounting needs root)");
        stop.cancelled().await;
        return Ok(());
    };
    let window = (duration / 5).clamp(Duration::from_secs(20), Duration::from_secs(300));
    if !pause(&stop, duration.mul_f64(0.4)).await {
        return Ok(());
    }
    let ballast = disk.join("ballast");
    let free = free_bytes(&disk).unwrap_or(0);
    let size = free.saturating_sub(MIN_FREE_DISK_BYTES / 2);
    let path = ballast.clone();
    tokio::task::spawn_blocking(move || write_ballast(&path, size)).await??;
    log(format!(
        "disk full: {} MiB of ballast, {:.0} s",
        size >> 20,
        window.as_secs_f64()
    ));
    let (epoch, attempted, acked) = (
        soak.epoch(),
        soak.counts.get("signin.attempted"),
        soak.counts.get("signin.acknowledged"),
    );
    let started = Instant::now();
    let mut min_free = u64::MAX;
    while started.elapsed() < window && pause(&stop, Duration::from_secs(1)).await {
        min_free = min_free.min(free_bytes(&disk).unwrap_or(0));
    }
    let held = started.elapsed();
    let attempted = soak.counts.get("signin.attempted") - attempted;
    let acked = soak.counts.get("signin.acknowledged") - acked;
    std::fs::remove_file(&ballast)?;
    soak.counts.max("disk_full.window_s", held.as_secs());
    soak.counts.max("disk_full.ballast_mib", size >> 20);
    soak.counts.max("disk_full.min_free_mib", min_free >> 20);
    soak.counts.max("disk_full.sign_ins_acknowledged", acked);
    if acked == 0 && attempted >= 5 && soak.epoch() == epoch {
        soak.violation(format!(
            "no sign-in acknowledged in {:.0} s with the disk under the floor ({attempted} attempted)",
            held.as_secs_f64()
        ));
    }
    log("disk full: ballast removed");
    // A worker runs until the end.
    stop.cancelled().await;
    Ok(())
}

fn write_ballast(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}
