//! Memory-backed pod volumes: the host directory of each secret, projected
//! and ServiceAccount volume (and of an `emptyDir` with `medium: Memory`)
//! is a tmpfs of bounded size, as the kubelet makes it, so the Secrets and
//! tokens a node's pods use never reach the node's disk. Mounting needs
//! root (CAP_SYS_ADMIN); an agent without it writes those files to disk and
//! says so once.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the warning that volumes go to disk has been given.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Whether `dir` is a mount point: its device differs from its parent's.
fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let parent = dir.parent().unwrap_or(dir);
    Ok(std::fs::metadata(dir)?.dev() != std::fs::metadata(parent)?.dev())
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
}

/// Makes `dir` (which exists) a tmpfs of at most `size_bytes`, unless it
/// is one already (an agent restarted over a running pod). False when this
/// process may not mount, after which the caller writes to disk.
pub fn ensure(dir: &Path, size_bytes: u64) -> io::Result<bool> {
    if is_mount_point(dir)? {
        return Ok(true);
    }
    let target = c_path(dir)?;
    let source = c"tmpfs";
    let options = std::ffi::CString::new(format!("size={size_bytes},mode=0755")).expect("no NUL");
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), source.as_ptr(), flags, options.as_ptr().cast()) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %e,
                "this agent may not mount tmpfs (it needs root): Secret and token volumes are written to the node's disk"
            );
        }
        return Ok(false);
    }
    Err(io::Error::new(e.kind(), format!("mounting a tmpfs on {}: {e}", dir.display())))
}

/// Undoes a `\NNN` octal escape of /proc/self/mountinfo.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// The mount points at or under `root`, deepest first, from a mountinfo text.
fn mounts_under(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> =
        mountinfo.lines().filter_map(|line| line.split(' ').nth(4)).map(unescape).filter(|p| p.starts_with(root)).collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts everything mounted at or under `root` (a pod's volume
/// directory, before it is removed). Lazily, so a process still holding a
/// file open does not keep the pod's directory from going.
pub fn unmount_under(root: &Path) -> io::Result<()> {
    let mountinfo = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // mountinfo names canonical paths.
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    for point in mounts_under(&mountinfo, &root) {
        let target = c_path(&point)?;
        // SAFETY: a valid NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::new(e.kind(), format!("unmounting {}: {e}", point.display())));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_under_a_root_come_deepest_first_and_unescaped() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
40 22 0:40 / /var/pods/u1/secret rw - tmpfs tmpfs rw,size=1024k
41 22 0:41 / /var/pods/u1/a\\040b rw - tmpfs tmpfs rw
42 40 0:42 / /var/pods/u1/secret/inner rw - tmpfs tmpfs rw
43 22 0:43 / /var/pods/u10/x rw - tmpfs tmpfs rw
";
        let found = mounts_under(info, Path::new("/var/pods/u1"));
        assert_eq!(
            found,
            [PathBuf::from("/var/pods/u1/secret/inner"), PathBuf::from("/var/pods/u1/secret"), PathBuf::from("/var/pods/u1/a b")]
        );
        assert!(mounts_under(info, Path::new("/elsewhere")).is_empty());
    }

    #[test]
    fn a_volume_is_a_tmpfs_when_root_and_goes_with_its_pod() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pod = tmp.path().join("uid");
        let volume = pod.join("secret");
        std::fs::create_dir_all(&volume).expect("dirs");
        if !ensure(&volume, 1024 * 1024).expect("mount or refuse") {
            eprintln!("SKIP: this test process may not mount tmpfs");
            return;
        }
        assert!(is_mount_point(&volume).unwrap(), "mounted");
        assert!(ensure(&volume, 1024 * 1024).unwrap(), "a second ensure finds it mounted");
        std::fs::write(volume.join("f"), b"x").expect("writable");
        let big = vec![0u8; 2 * 1024 * 1024];
        assert!(std::fs::write(volume.join("big"), &big).is_err(), "the size bound holds");
        unmount_under(&pod).expect("unmounted");
        assert!(!is_mount_point(&volume).unwrap(), "gone");
        assert!(!volume.join("f").exists(), "its files were only in memory");
        std::fs::remove_dir_all(&pod).expect("the pod directory goes");
    }
}
