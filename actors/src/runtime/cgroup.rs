//! cgroup limits for the `process` runtime. A container with a memory or
//! CPU limit gets a cgroup of its own, `flotilla/<pod uid>-<container>-<n>`,
//! which its process joins between fork and exec, so nothing it runs
//! escapes the limit and the kernel's OOM killer reports into it.
//!
//! cgroup v2 is used where its memory or cpu controller is available. The
//! cgroups go under the hierarchy's root rather than under the agent's own
//! cgroup: v2 lets only leaf cgroups hold processes, and the agent lives in
//! its own. On a v1 host (legacy or hybrid, where the unified hierarchy
//! lacks those controllers) they nest under the agent's own cgroup in each
//! of the memory, cpu and cpuacct hierarchies, so whatever accounts for
//! the agent keeps accounting for its containers. Where neither is
//! writable, [`Hierarchy::detect`] says why and the runtime runs
//! containers without limits.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The CFS period every CPU quota is written against, in microseconds.
pub const CPU_PERIOD_USEC: i64 = 100_000;
/// The kernel refuses quotas under 1 ms.
const CPU_QUOTA_MIN_USEC: i64 = 1_000;
/// The directory the containers' cgroups are made in.
pub const PARENT: &str = "flotilla";
/// The v2 controllers the limits need.
const CONTROLLERS: [&str; 2] = ["memory", "cpu"];
/// A CPU rate is measured over at least this long.
const CPU_SAMPLE: Duration = Duration::from_millis(100);
/// An earlier CPU sample older than this is too stale to average over.
const CPU_SAMPLE_MAX_AGE: Duration = Duration::from_secs(30);
/// Killed processes take a moment to leave their cgroup, which cannot be
/// removed until they have.
const REMOVE_ATTEMPTS: u32 = 40;
const REMOVE_PAUSE: Duration = Duration::from_millis(25);
/// The shared parent can vanish between making it and making a child in
/// it, when the last sibling's removal takes it away.
const CREATE_ATTEMPTS: u32 = 3;
/// Cgroup names stay well under NAME_MAX.
const NAME_MAX_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no mounted cgroup hierarchy offers the memory or cpu controller")]
    NoControllers,
    #[error("{path:?}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cgroup path {0:?} contains a NUL byte")]
    Nul(PathBuf),
}

impl CgroupError {
    fn is_not_found(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

fn io_error(path: &Path, source: std::io::Error) -> CgroupError {
    CgroupError::Io { path: path.to_path_buf(), source }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, e))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|e| io_error(path, e))
}

/// A container's limits; zero or negative values mean none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_millis: Option<i64>,
    pub memory_bytes: Option<i64>,
}

impl Limits {
    /// CPU time allowed per [`CPU_PERIOD_USEC`].
    pub fn cpu_quota_usec(&self) -> Option<i64> {
        self.cpu_millis.filter(|m| *m > 0).map(|m| m.saturating_mul(CPU_PERIOD_USEC / 1000).max(CPU_QUOTA_MIN_USEC))
    }

    /// The value of v2's `cpu.max`.
    pub fn cpu_max(&self) -> Option<String> {
        self.cpu_quota_usec().map(|quota| format!("{quota} {CPU_PERIOD_USEC}"))
    }

    /// The value of v2's `memory.max` and v1's `memory.limit_in_bytes`.
    pub fn memory_max(&self) -> Option<String> {
        self.memory_bytes.filter(|b| *b > 0).map(|b| b.to_string())
    }

    pub fn is_empty(&self) -> bool {
        self.cpu_quota_usec().is_none() && self.memory_max().is_none()
    }
}

/// Where this host lets the agent make cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2: containers' cgroups under `<root>/flotilla`, with these
    /// controllers enabled on the way down.
    Unified { root: PathBuf, controllers: Vec<String> },
    /// cgroup v1: the agent's own cgroup in each hierarchy that is mounted;
    /// `cpuacct` is None where it shares the cpu hierarchy.
    Legacy { memory: Option<PathBuf>, cpu: Option<PathBuf>, cpuacct: Option<PathBuf> },
}

/// One line of /proc/self/mountinfo, as far as cgroups care.
struct Mount {
    root: PathBuf,
    point: PathBuf,
    fstype: String,
    options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = if bytes[i] == b'\\' {
            bytes.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok()).and_then(|d| u8::from_str_radix(d, 8).ok())
        } else {
            None
        };
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let head: Vec<&str> = head.split(' ').collect();
            let mut tail = tail.split(' ');
            let fstype = tail.next()?.to_string();
            let _source = tail.next()?;
            let options = tail.next().unwrap_or("").to_string();
            Some(Mount { root: unescape(head.get(3)?), point: unescape(head.get(4)?), fstype, options })
        })
        .collect()
}

/// This process's cgroups as the mounts show them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Located {
    /// Where the v2 hierarchy is mounted.
    unified: Option<PathBuf>,
    /// The agent's own v1 cgroup per controller.
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
}

/// Reads `/proc/self/mountinfo` and `/proc/self/cgroup` texts.
fn locate(mountinfo: &str, own: &str) -> Located {
    let mounts = parse_mounts(mountinfo);
    let own_path = |controller: &str| {
        own.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            controllers.split(',').any(|c| c == controller).then(|| PathBuf::from(path))
        })
    };
    let legacy = |controller: &str| -> Option<PathBuf> {
        let mount = mounts.iter().find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller))?;
        let path = own_path(controller)?;
        // A cgroup outside what the mount shows cannot be reached.
        let relative = path.strip_prefix(&mount.root).ok()?;
        Some(if relative.as_os_str().is_empty() { mount.point.clone() } else { mount.point.join(relative) })
    };
    Located {
        unified: mounts.iter().find(|m| m.fstype == "cgroup2").map(|m| m.point.clone()),
        memory: legacy("memory"),
        cpu: legacy("cpu"),
        cpuacct: legacy("cpuacct"),
    }
}

/// Enables `controllers` for the children of `dir`, writing only those
/// missing: a namespace's root that holds processes refuses the write
/// even for controllers already on.
fn enable(dir: &Path, controllers: &[String]) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = read(&file)?;
    let missing: Vec<String> =
        controllers.iter().filter(|c| !enabled.split_whitespace().any(|e| e == c.as_str())).map(|c| format!("+{c}")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&file, &missing.join(" "))
}

/// Makes a container's cgroup. One left over by an earlier agent under
/// the same name is replaced, since its OOM count would mislead.
fn make_dir(dir: &Path) -> Result<PathBuf, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(dir.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_dir(dir).and_then(|()| std::fs::create_dir(dir)).map(|()| dir.to_path_buf()).map_err(|e| io_error(dir, e))
        }
        Err(e) => Err(io_error(dir, e)),
    }
}

impl Hierarchy {
    /// Finds a writable hierarchy, v2 first, and checks it by making (and
    /// removing again) the `flotilla` parent.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let located = locate(&read(Path::new("/proc/self/mountinfo"))?, &read(Path::new("/proc/self/cgroup"))?);
        if let Some(root) = &located.unified {
            let available = read(&root.join("cgroup.controllers")).unwrap_or_default();
            let controllers: Vec<String> =
                CONTROLLERS.iter().filter(|c| available.split_whitespace().any(|a| a == **c)).map(|c| c.to_string()).collect();
            if !controllers.is_empty() {
                let hierarchy = Hierarchy::Unified { root: root.clone(), controllers };
                hierarchy.probe()?;
                return Ok(hierarchy);
            }
        }
        if located.memory.is_some() || located.cpu.is_some() {
            let cpuacct = located.cpuacct.filter(|a| Some(a) != located.cpu.as_ref());
            let hierarchy = Hierarchy::Legacy { memory: located.memory, cpu: located.cpu, cpuacct };
            hierarchy.probe()?;
            return Ok(hierarchy);
        }
        Err(CgroupError::NoControllers)
    }

    /// The directories the containers' cgroups are made in.
    fn parents(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::Unified { root, .. } => vec![root.join(PARENT)],
            Hierarchy::Legacy { memory, cpu, cpuacct } => [memory, cpu, cpuacct].into_iter().flatten().map(|d| d.join(PARENT)).collect(),
        }
    }

    fn prepare(&self) -> Result<(), CgroupError> {
        if let Hierarchy::Unified { root, controllers } = self {
            enable(root, controllers)?;
        }
        for parent in self.parents() {
            match std::fs::create_dir(&parent) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(&parent, e)),
            }
            if let Hierarchy::Unified { controllers, .. } = self {
                enable(&parent, controllers)?;
            }
        }
        Ok(())
    }

    fn probe(&self) -> Result<(), CgroupError> {
        let mut attempt = 1;
        loop {
            match self.prepare() {
                Ok(()) => break,
                Err(e) if e.is_not_found() && attempt < CREATE_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn make(&self, name: &str) -> Result<Paths, CgroupError> {
        match self {
            Hierarchy::Unified { root, .. } => Ok(Paths::V2 { dir: make_dir(&root.join(PARENT).join(name))? }),
            Hierarchy::Legacy { memory, cpu, cpuacct } => {
                let dirs = [memory, cpu, cpuacct].map(|base| base.as_ref().map(|b| b.join(PARENT).join(name)));
                let mut made: Vec<&PathBuf> = Vec::new();
                for dir in dirs.iter().flatten() {
                    if let Err(e) = make_dir(dir) {
                        for d in made {
                            let _ = std::fs::remove_dir(d);
                        }
                        return Err(e);
                    }
                    made.push(dir);
                }
                let [memory, cpu, cpuacct] = dirs;
                Ok(Paths::V1 { memory, cpu, cpuacct })
            }
        }
    }
}

/// A container's cgroup directories, as its record keeps them for an
/// agent that adopts the container after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version", rename_all = "lowercase")]
pub enum Paths {
    V2 { dir: PathBuf },
    V1 { memory: Option<PathBuf>, cpu: Option<PathBuf>, cpuacct: Option<PathBuf> },
}

/// One container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    paths: Paths,
    /// `cgroup.procs` of each directory, preformatted for the child to
    /// write into between fork and exec, where it must not allocate.
    procs: Vec<CString>,
    /// The last CPU sample: when, and the usage then in microseconds.
    last_cpu: Mutex<Option<(Instant, u64)>>,
}

/// A cgroup name from a container's: what cgroupfs and a reader accept.
pub fn sanitise(name: &str) -> String {
    let keep = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let mut out: String = name.chars().map(|c| if keep(c) { c } else { '_' }).take(NAME_MAX_CHARS).collect();
    // "", "." and ".." are not names a directory can be made with.
    if out.chars().all(|c| c == '.') {
        out.insert(0, '_');
    }
    out
}

/// Moves the calling process into the cgroups whose `cgroup.procs` files
/// are given (writing "0" names the writer). Meant for `pre_exec`, between
/// fork and exec, so it makes only async-signal-safe calls and allocates
/// nothing.
pub fn join_self(procs: &[CString]) -> std::io::Result<()> {
    for file in procs {
        let fd = unsafe { libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let failed = match written {
            1 => None,
            n if n < 0 => Some(std::io::Error::last_os_error()),
            _ => Some(std::io::Error::from_raw_os_error(libc::EIO)),
        };
        unsafe {
            libc::close(fd);
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(())
}

/// The number after `key` in a flat-keyed cgroup file (`memory.events`,
/// `cpu.stat`, `memory.oom_control`).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Cgroup {
    /// Makes the cgroup `name` (sanitised) and writes `limits` into it.
    /// A limit whose controller the host lacks is left out.
    pub fn create(hierarchy: &Hierarchy, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let name = sanitise(name);
        let mut attempt = 1;
        let paths = loop {
            match hierarchy.prepare().and_then(|()| hierarchy.make(&name)) {
                Ok(paths) => break paths,
                Err(e) if e.is_not_found() && attempt < CREATE_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        let mut cgroup = Cgroup { paths, procs: Vec::new(), last_cpu: Mutex::new(None) };
        let ready = cgroup.apply(limits).and_then(|()| cgroup.procs_files());
        match ready {
            Ok(procs) => {
                cgroup.procs = procs;
                Ok(cgroup)
            }
            Err(e) => {
                for dir in cgroup.dirs() {
                    let _ = std::fs::remove_dir(dir);
                }
                Err(e)
            }
        }
    }

    /// A cgroup an earlier agent run made, from the container's record.
    /// Directories not of the form `/…/flotilla/<name>` are refused, so a
    /// damaged record cannot aim `kill_all` or `remove` elsewhere.
    pub fn open(paths: Paths) -> Option<Cgroup> {
        let cgroup = Cgroup { paths, procs: Vec::new(), last_cpu: Mutex::new(None) };
        let plausible = |d: &PathBuf| {
            d.is_absolute()
                && d.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
                && d.parent().and_then(Path::file_name) == Some(OsStr::new(PARENT))
        };
        cgroup.dirs().iter().all(plausible).then_some(cgroup)
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Its directories, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.paths {
            Paths::V2 { dir } => vec![dir.clone()],
            Paths::V1 { memory, cpu, cpuacct } => [memory, cpu, cpuacct].into_iter().flatten().cloned().collect(),
        }
    }

    /// What a child passes to [`join_self`]; empty for an adopted cgroup.
    pub fn procs(&self) -> &[CString] {
        &self.procs
    }

    fn procs_files(&self) -> Result<Vec<CString>, CgroupError> {
        self.dirs()
            .into_iter()
            .map(|d| {
                let file = d.join("cgroup.procs");
                CString::new(file.as_os_str().as_bytes()).map_err(|_| CgroupError::Nul(file))
            })
            .collect()
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        match &self.paths {
            Paths::V2 { dir } => {
                if let Some(max) = limits.memory_max().filter(|_| dir.join("memory.max").exists()) {
                    write(&dir.join("memory.max"), &max)?;
                    // Swap would let the container crawl on past its limit
                    // instead of being stopped; and one OOM kill takes the
                    // whole container, as under Kubernetes.
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                    let _ = std::fs::write(dir.join("memory.oom.group"), "1");
                }
                if let Some(max) = limits.cpu_max().filter(|_| dir.join("cpu.max").exists()) {
                    write(&dir.join("cpu.max"), &max)?;
                }
            }
            Paths::V1 { memory, cpu, .. } => {
                if let (Some(dir), Some(max)) = (memory, limits.memory_max()) {
                    write(&dir.join("memory.limit_in_bytes"), &max)?;
                    // Present only with swap accounting; must follow the
                    // memory limit, which it may not undercut.
                    let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), &max);
                }
                if let (Some(dir), Some(quota)) = (cpu, limits.cpu_quota_usec()) {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_USEC.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// How many processes the kernel's OOM killer killed in it.
    pub fn oom_kills(&self) -> u64 {
        let file = match &self.paths {
            Paths::V2 { dir } => dir.join("memory.events"),
            Paths::V1 { memory: Some(dir), .. } => dir.join("memory.oom_control"),
            Paths::V1 { memory: None, .. } => return 0,
        };
        std::fs::read_to_string(file).ok().and_then(|text| field(&text, "oom_kill")).unwrap_or(0)
    }

    /// Memory charged to it now.
    pub fn memory_bytes(&self) -> Option<i64> {
        let file = match &self.paths {
            Paths::V2 { dir } => dir.join("memory.current"),
            Paths::V1 { memory, .. } => memory.as_ref()?.join("memory.usage_in_bytes"),
        };
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// CPU time used so far, in microseconds.
    fn cpu_usage_usec(&self) -> Option<u64> {
        match &self.paths {
            Paths::V2 { dir } => field(&std::fs::read_to_string(dir.join("cpu.stat")).ok()?, "usage_usec"),
            Paths::V1 { cpu, cpuacct, .. } => {
                let dir = cpuacct.as_ref().or(cpu.as_ref())?;
                let nanos: u64 = std::fs::read_to_string(dir.join("cpuacct.usage")).ok()?.trim().parse().ok()?;
                Some(nanos / 1000)
            }
        }
    }

    /// CPU in use, in millicores: averaged since the previous call when
    /// that is recent enough, else over a short sample taken now.
    pub async fn cpu_millis(&self) -> Option<i64> {
        let lock = || self.last_cpu.lock().unwrap_or_else(|p| p.into_inner());
        let now = (Instant::now(), self.cpu_usage_usec()?);
        let previous = lock().replace(now);
        let (from, to) = match previous {
            Some(p) if (CPU_SAMPLE..=CPU_SAMPLE_MAX_AGE).contains(&now.0.saturating_duration_since(p.0)) => (p, now),
            _ => {
                tokio::time::sleep(CPU_SAMPLE).await;
                let later = (Instant::now(), self.cpu_usage_usec()?);
                *lock() = Some(later);
                (now, later)
            }
        };
        let elapsed_usec = to.0.saturating_duration_since(from.0).as_micros().max(1) as f64;
        let used_usec = to.1.saturating_sub(from.1) as f64;
        Some((used_usec / elapsed_usec * 1000.0).round() as i64)
    }

    /// SIGKILLs everything in it, including processes that left the
    /// container's process group.
    pub fn kill_all(&self) {
        if let Paths::V2 { dir } = &self.paths {
            // cgroup.kill (Linux 5.14) also catches processes forking now.
            if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        for dir in self.dirs() {
            let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else { continue };
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|pid| *pid > 0) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }

    /// Kills what is left in it and removes its directories. The shared
    /// `flotilla` parent stays: removing it when it looks empty would race
    /// with another container's cgroup being made in it.
    pub async fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all();
        for dir in self.dirs() {
            let mut attempt = 1;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) if attempt < REMOVE_ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(REMOVE_PAUSE).await;
                    }
                    Err(e) => return Err(io_error(&dir, e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_formatted_as_the_kernel_reads_them() {
        let limits = |cpu_millis: Option<i64>, memory_bytes: Option<i64>| Limits { cpu_millis, memory_bytes };
        assert_eq!(limits(Some(250), None).cpu_max().as_deref(), Some("25000 100000"));
        assert_eq!(limits(Some(2000), None).cpu_max().as_deref(), Some("200000 100000"));
        assert_eq!(limits(Some(1), None).cpu_max().as_deref(), Some("1000 100000"), "the kernel's minimum quota");
        assert_eq!(limits(Some(1), None).cpu_quota_usec(), Some(1000));
        assert_eq!(limits(Some(0), None).cpu_max(), None);
        assert_eq!(limits(Some(-5), None).cpu_max(), None);
        assert_eq!(limits(Some(i64::MAX), None).cpu_quota_usec(), Some(i64::MAX), "saturates");
        assert_eq!(limits(None, Some(32 << 20)).memory_max().as_deref(), Some("33554432"));
        assert_eq!(limits(None, Some(0)).memory_max(), None);
        assert_eq!(limits(None, Some(-1)).memory_max(), None);
        assert!(limits(None, None).is_empty());
        assert!(limits(Some(0), Some(0)).is_empty());
        assert!(!limits(None, Some(1)).is_empty());
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitise("0b5c-1e/web app-3"), "0b5c-1e_web_app-3");
        assert_eq!(sanitise(""), "_");
        assert_eq!(sanitise(".."), "_..");
        assert_eq!(sanitise("é"), "_");
        assert_eq!(sanitise(&"x".repeat(500)).len(), NAME_MAX_CHARS);
    }

    #[test]
    fn finds_a_hybrid_hosts_v1_cgroups() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let own = "4:memory:/process_api/fb7d\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        assert_eq!(
            locate(mountinfo, own),
            Located {
                unified: Some("/sys/fs/cgroup/unified".into()),
                memory: Some("/sys/fs/cgroup/memory/process_api/fb7d".into()),
                cpu: Some("/sys/fs/cgroup/cpu".into()),
                cpuacct: Some("/sys/fs/cgroup/cpuacct".into()),
            }
        );
    }

    #[test]
    fn finds_v2_and_co_mounted_or_unreachable_v1_cgroups() {
        let v2 = "25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(locate(v2, "0::/system.slice/flotilla.service\n").unified, Some("/sys/fs/cgroup".into()));
        // cpu and cpuacct together; a mount showing a subtree; a cgroup
        // outside the mounted subtree; an escaped space.
        let v1 = "\
40 30 0:40 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
41 30 0:41 /docker/abc /sys/fs/cgroup/my\\040memory rw - cgroup cgroup rw,memory
";
        let located = locate(v1, "5:memory:/docker/abc/inner\n4:cpu,cpuacct:/user.slice\n");
        assert_eq!(located.cpu, Some("/sys/fs/cgroup/cpu,cpuacct/user.slice".into()));
        assert_eq!(located.cpuacct, located.cpu);
        assert_eq!(located.memory, Some("/sys/fs/cgroup/my memory/inner".into()));
        assert_eq!(locate(v1, "5:memory:/elsewhere\n").memory, None);
        assert_eq!(locate("garbage\n\n - \n", "::\n"), Located::default());
    }

    #[test]
    fn reads_flat_keyed_files() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(field(events, "oom_kill"), Some(1));
        assert_eq!(field("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"), Some(3));
        assert_eq!(field("usage_usec 4242\nuser_usec 1\n", "usage_usec"), Some(4242));
        assert_eq!(field("oom_kill x\n", "oom_kill"), None);
        assert_eq!(field("", "oom_kill"), None);
    }

    #[test]
    fn records_refuse_cgroups_outside_a_flotilla_parent() {
        let v2 = |dir: &str| Cgroup::open(Paths::V2 { dir: dir.into() }).is_some();
        assert!(v2("/sys/fs/cgroup/flotilla/u1-c-0"));
        assert!(!v2("/sys/fs/cgroup"));
        assert!(!v2("/sys/fs/cgroup/flotilla/../x"));
        assert!(!v2("flotilla/u1-c-0"));
        let memory: Option<PathBuf> = Some("/sys/fs/cgroup/memory/a/flotilla/u1-c-0".into());
        assert!(Cgroup::open(Paths::V1 { memory: memory.clone(), cpu: None, cpuacct: None }).is_some());
        assert!(Cgroup::open(Paths::V1 { memory, cpu: Some("/sys/fs/cgroup/cpu".into()), cpuacct: None }).is_none());
        let text = serde_json::to_string(&Paths::V2 { dir: "/sys/fs/cgroup/flotilla/u1-c-0".into() }).unwrap();
        assert_eq!(text, r#"{"version":"v2","dir":"/sys/fs/cgroup/flotilla/u1-c-0"}"#);
    }
}
