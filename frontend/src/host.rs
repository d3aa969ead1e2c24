//! `GET /system` and `GET /services`: the host at a glance, read without privileges.
//!
//! `/system` reads `/proc/stat` (CPU), `/proc/meminfo` (memory), `sysinfo(2)` (uptime, load;
//! also memory when `/proc/meminfo` is hidden) and `statvfs(2)` of `frontend.state_dir`.
//! Under the production unit `ProcSubset=pid` hides `/proc/stat` and `/proc/meminfo`:
//! `cpu_percent` is then `null` and memory comes from `sysinfo(2)`, where "available" is
//! free plus buffer memory (the kernel's page cache estimate is not there).
//!
//! `/services` asks `systemctl show` (which talks to systemd over the system bus; nox itself
//! has no D-Bus code). When that fails — no bus, or a unit sandbox that cannot reach it — it
//! falls back to the cgroup tree: a unit with a populated cgroup under `system.slice` is
//! `active`, a unit whose unit file exists is otherwise `inactive`, anything else `unknown`.
//! Outside systemd every unit is `unavailable`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};

use crate::AppState;
use crate::api_types::{DiskStatus, MemoryStatus, ServiceStatus, ServicesReply, SystemStatus};
use crate::body::{self, Body};

/// The CPU window when no recent sample exists.
const CPU_WINDOW: Duration = Duration::from_millis(250);
/// A previous sample this old or younger (and at least `MIN_CPU_WINDOW` old) is reused.
const MAX_CPU_SAMPLE_AGE: Duration = Duration::from_secs(15);
const MIN_CPU_WINDOW: Duration = Duration::from_millis(200);
/// How long `systemctl` may take.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(3);

/// Cumulative CPU times from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// The last CPU sample, so that a poll every few seconds measures the time between polls.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Mutex<Option<(Instant, CpuTimes)>>,
}

impl CpuSampler {
    fn remember(&self, now: Instant, times: CpuTimes) -> Option<(Instant, CpuTimes)> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.replace((now, times))
    }

    /// Busy percentage of all CPUs, or `None` when `/proc/stat` cannot be read.
    async fn percent(&self) -> Option<f64> {
        let now = Instant::now();
        let current = read_cpu_times()?;
        let previous = self.remember(now, current);
        if let Some((at, before)) = previous {
            let age = now.duration_since(at);
            if (MIN_CPU_WINDOW..=MAX_CPU_SAMPLE_AGE).contains(&age) {
                return cpu_percent(before, current);
            }
        }
        tokio::time::sleep(CPU_WINDOW).await;
        let later = read_cpu_times()?;
        self.remember(Instant::now(), later);
        cpu_percent(current, later)
    }
}

/// The aggregate `cpu` line of `/proc/stat`: busy is everything but idle and iowait; guest
/// time is already counted in user time and is left out of the total.
pub fn parse_cpu_line(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Busy share between two samples, 0-100, one decimal.
pub fn cpu_percent(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let busy = after.busy.checked_sub(before.busy)?;
    if total == 0 {
        return Some(0.0);
    }
    Some(round1(busy as f64 * 100.0 / total as f64))
}

fn read_cpu_times() -> Option<CpuTimes> {
    parse_cpu_line(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            kib.checked_mul(1024)
        })
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Used share, 0-100, one decimal.
pub fn used_percent(total: u64, available: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    round1(total.saturating_sub(available) as f64 * 100.0 / total as f64)
}

fn memory(info: Option<&nix::sys::sysinfo::SysInfo>) -> Option<MemoryStatus> {
    let (total, available) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo(&text))
        .or_else(|| info.map(|info| (info.ram_total(), info.ram_unused())))?;
    Some(MemoryStatus {
        total,
        available,
        used_percent: used_percent(total, available),
    })
}

/// `statvfs` of `path`: total and available bytes; used the way `df` counts it.
fn disk(path: &Path) -> Option<DiskStatus> {
    let stats = match nix::sys::statvfs::statvfs(path) {
        Ok(stats) => stats,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "system: statvfs failed");
            return None;
        }
    };
    let fragment = stats.fragment_size();
    let blocks = stats.blocks();
    let free = stats.blocks_free();
    let available = stats.blocks_available();
    let used = blocks.saturating_sub(free);
    let usable = used.saturating_add(available);
    let used_percent = if usable == 0 {
        0.0
    } else {
        round1(used as f64 * 100.0 / usable as f64)
    };
    Some(DiskStatus {
        path: path.display().to_string(),
        total: blocks.saturating_mul(fragment),
        free: available.saturating_mul(fragment),
        used_percent,
    })
}

/// `GET /system`.
pub async fn system(state: &AppState) -> Response<Body> {
    let cpu_percent = state.cpu.percent().await;
    let state_dir = state.config.state_dir.clone();
    let snapshot = tokio::task::spawn_blocking(move || {
        let info = nix::sys::sysinfo::sysinfo().ok();
        let (uptime_s, load) = info.as_ref().map_or((0, [0.0; 3]), |info| {
            let (one, five, fifteen) = info.load_average();
            (
                info.uptime().as_secs(),
                [round2(one), round2(five), round2(fifteen)],
            )
        });
        (memory(info.as_ref()), disk(&state_dir), uptime_s, load)
    })
    .await;
    let (memory, disk, uptime_s, load) = snapshot.unwrap_or((None, None, 0, [0.0; 3]));
    body::json(
        StatusCode::OK,
        &SystemStatus {
            cpu_percent,
            memory,
            disk,
            uptime_s,
            load,
        },
    )
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Where the states came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Systemctl,
    Cgroup,
    None,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Systemctl => "systemctl",
            Source::Cgroup => "cgroup",
            Source::None => "none",
        }
    }
}

/// `GET /services`.
pub async fn services(state: &AppState) -> Response<Body> {
    let units = &state.config.services;
    let (source, states) = if !Path::new("/run/systemd/system").is_dir() {
        (Source::None, vec!["unavailable".to_owned(); units.len()])
    } else {
        match systemctl_states(units).await {
            Some(states) => (Source::Systemctl, states),
            None => (
                Source::Cgroup,
                units
                    .iter()
                    .map(|unit| cgroup_state(unit, Path::new("/sys/fs/cgroup"), UNIT_DIRS))
                    .collect(),
            ),
        }
    };
    let services = units
        .iter()
        .zip(states)
        .map(|(unit, state)| ServiceStatus {
            unit: unit.clone(),
            state,
        })
        .collect();
    body::json(
        StatusCode::OK,
        &ServicesReply {
            services,
            source: source.name().to_owned(),
        },
    )
}

fn systemctl_program() -> PathBuf {
    ["/usr/bin/systemctl", "/bin/systemctl"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("systemctl"))
}

/// The `ActiveState` of each unit (`unknown` for units systemd does not know), or `None`
/// when `systemctl` cannot answer.
async fn systemctl_states(units: &[String]) -> Option<Vec<String>> {
    if units.is_empty() {
        return Some(Vec::new());
    }
    let mut command = tokio::process::Command::new(systemctl_program());
    command
        .args([
            "show",
            "--no-pager",
            "--property=Id,LoadState,ActiveState",
            "--",
        ])
        .args(units)
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(SYSTEMCTL_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => {
            tracing::info!(%error, "services: cannot run systemctl; reading cgroups instead");
            return None;
        }
        Err(_) => {
            tracing::info!("services: systemctl did not answer; reading cgroups instead");
            return None;
        }
    };
    if !output.status.success() {
        tracing::info!(
            status = %output.status,
            stderr = %String::from_utf8_lossy(&output.stderr).trim(),
            "services: systemctl failed; reading cgroups instead"
        );
        return None;
    }
    parse_systemctl_show(&String::from_utf8_lossy(&output.stdout), units.len())
}

/// `systemctl show` output: one block of `Key=Value` lines per unit, separated by blank
/// lines, in the order asked.
pub fn parse_systemctl_show(text: &str, expected: usize) -> Option<Vec<String>> {
    let mut states = Vec::new();
    for block in text.split("\n\n").filter(|block| !block.trim().is_empty()) {
        let value = |key: &str| {
            block
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
        };
        let state = match (value("LoadState"), value("ActiveState")) {
            (Some("not-found"), _) | (_, None) => "unknown",
            (_, Some(active)) if !active.is_empty() => active,
            _ => "unknown",
        };
        states.push(state.to_owned());
    }
    (states.len() == expected).then_some(states)
}

/// Where unit files live, in systemd's search order.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/run/systemd/transient",
    "/run/systemd/generator",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// A unit's state from the cgroup tree (`<cgroup_root>/system.slice/<unit>`) and the unit
/// file directories.
pub fn cgroup_state(unit: &str, cgroup_root: &Path, unit_dirs: &[&str]) -> String {
    let events = cgroup_root
        .join("system.slice")
        .join(unit)
        .join("cgroup.events");
    if let Ok(text) = std::fs::read_to_string(events)
        && text.lines().any(|line| line.trim() == "populated 1")
    {
        return "active".to_owned();
    }
    // `name@instance.service` is made from the template `name@.service`.
    let template = unit
        .split_once('@')
        .and_then(|(name, rest)| Some(format!("{name}@{}", &rest[rest.rfind('.')?..])));
    let known = unit_dirs.iter().any(|dir| {
        let dir = Path::new(dir);
        dir.join(unit).exists() || template.as_ref().is_some_and(|t| dir.join(t).exists())
    });
    if known { "inactive" } else { "unknown" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_counts_idle_and_iowait_as_not_busy() {
        let stat = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 1 2 3 4\nintr 1\n";
        let times = parse_cpu_line(stat).unwrap();
        assert_eq!(times.total, 1000);
        assert_eq!(times.busy, 160);
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_cpu_line("cpu  a b c d\n"), None);
    }

    #[test]
    fn cpu_percent_is_the_busy_share_between_two_samples() {
        let before = CpuTimes {
            busy: 100,
            total: 1000,
        };
        let after = CpuTimes {
            busy: 150,
            total: 1200,
        };
        assert_eq!(cpu_percent(before, after), Some(25.0));
        assert_eq!(cpu_percent(before, before), Some(0.0));
        assert_eq!(cpu_percent(after, before), None);
    }

    #[test]
    fn meminfo_gives_total_and_available_in_bytes() {
        let text = "MemTotal:       16000 kB\nMemFree:  100 kB\nMemAvailable:    4000 kB\n";
        assert_eq!(parse_meminfo(text), Some((16000 * 1024, 4000 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(used_percent(16000, 4000), 75.0);
        assert_eq!(used_percent(0, 0), 0.0);
    }

    #[test]
    fn systemctl_show_blocks_become_states_and_unknown_units_say_unknown() {
        let text = "Id=nox-frontend.service\nLoadState=loaded\nActiveState=active\n\n\
                    Id=nope.service\nLoadState=not-found\nActiveState=inactive\n\n\
                    Id=nox-executor.service\nLoadState=loaded\nActiveState=failed\n";
        assert_eq!(
            parse_systemctl_show(text, 3).unwrap(),
            ["active", "unknown", "failed"]
        );
        assert_eq!(parse_systemctl_show(text, 2), None);
    }

    #[test]
    fn the_cgroup_fallback_tells_active_inactive_and_unknown_apart() {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = dir.path().join("cgroup");
        let units = dir.path().join("units");
        std::fs::create_dir_all(cgroups.join("system.slice/up.service")).unwrap();
        std::fs::write(
            cgroups.join("system.slice/up.service/cgroup.events"),
            "populated 1\nfrozen 0\n",
        )
        .unwrap();
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(units.join("down.service"), "[Service]\n").unwrap();
        std::fs::write(units.join("getty@.service"), "[Service]\n").unwrap();
        let dirs = [units.to_str().unwrap()];
        assert_eq!(cgroup_state("up.service", &cgroups, &dirs), "active");
        assert_eq!(cgroup_state("down.service", &cgroups, &dirs), "inactive");
        assert_eq!(
            cgroup_state("getty@tty1.service", &cgroups, &dirs),
            "inactive"
        );
        assert_eq!(cgroup_state("nope.service", &cgroups, &dirs), "unknown");
    }

    #[tokio::test]
    async fn the_cpu_sampler_answers_with_a_percentage_here() {
        let sampler = CpuSampler::default();
        if std::fs::read_to_string("/proc/stat").is_ok() {
            let percent = sampler.percent().await.unwrap();
            assert!((0.0..=100.0).contains(&percent), "{percent}");
        }
    }
}
