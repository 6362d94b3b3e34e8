//! Whether the process that owns a rotation still runs, where that can be seen (#21, 2).
//!
//! A run writes its process into its lease ([`Holder`]: the host name, the machine's boot id, the
//! process id and the process's start time). A contender on the **same machine** (same host
//! name, boot id and PID namespace) can then tell a dead owner from a slow one at once, instead of waiting out
//! the lease: the process id no longer runs, or runs another program (its start time differs:
//! the id was reused), or is a zombie. Anywhere else (another host, a Lambda sandbox, a machine
//! without `/proc`) nothing is concluded and the lease's expiry decides, as before.
//!
//! Linux only, through `/proc`; on other systems [`Holder::this_process`] is `None` and no lease
//! carries a holder.

use std::fs;

/// The process that owns a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The host name.
    pub host: String,
    /// The machine's boot id (`/proc/sys/kernel/random/boot_id`) and the process's PID namespace
    /// (`/proc/self/ns/pid`), as `BOOT/pid:[INODE]`: a process id means something only inside
    /// one boot and one namespace (containers on one kernel share the boot id, not the
    /// namespace).
    pub boot: String,
    /// The process id.
    pub pid: u32,
    /// The process's start time, in clock ticks since boot (`/proc/PID/stat`, field 22).
    pub started: u64,
}

fn read_trimmed(path: &str) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// The state letter and start time of a process, from `/proc/PID/stat`.
fn stat_of(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: fields 3.. follow the
    // last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let started = fields.get(19)?.parse().ok()?;
    Some((state, started))
}

impl Holder {
    /// This process, when the system shows what a contender needs to check it.
    pub fn this_process() -> Option<Self> {
        let pid = std::process::id();
        Some(Self {
            host: read_trimmed("/proc/sys/kernel/hostname")?,
            boot: format!(
                "{}/{}",
                read_trimmed("/proc/sys/kernel/random/boot_id")?,
                fs::read_link("/proc/self/ns/pid").ok()?.to_string_lossy()
            ),
            pid,
            started: stat_of(pid)?.1,
        })
    }

    /// Whether this holder is a process of this machine (same host and boot) that no longer
    /// runs. `false` whenever that cannot be seen.
    pub fn is_dead_here(&self) -> bool {
        let Some(me) = Self::this_process() else {
            return false;
        };
        if me.host != self.host || me.boot != self.boot {
            return false;
        }
        match stat_of(self.pid) {
            None => true,
            Some((state, started)) => state == 'Z' || state == 'X' || started != self.started,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_or_a_missing_pid_is_dead() {
        let me = Holder::this_process().expect("this test runs on Linux with /proc");
        assert!(!me.is_dead_here(), "{me:?}");
        let reused = Holder {
            started: me.started + 1,
            ..me.clone()
        };
        assert!(reused.is_dead_here(), "a reused pid is another process");
        let gone = Holder {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert!(gone.is_dead_here(), "no such process");
        let elsewhere = Holder {
            host: format!("{}-other", me.host),
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert!(!elsewhere.is_dead_here(), "another host is never judged");
        let rebooted = Holder {
            boot: "another-boot".into(),
            pid: u32::MAX - 1,
            ..me
        };
        assert!(!rebooted.is_dead_here(), "another boot is never judged");
    }
}
