//! The `/run_sh` first-word denylist, kept from the seed.
//!
//! This is a courtesy, not the security boundary: it stops an obvious `reboot` or `sudo` with
//! a clear message instead of a confusing failure, and nothing more. Anyone can get around it
//! (`sh -c reboot`, `$(echo reboot)`, a Python job). What actually confines a job is the
//! sandbox the executor applies to every job: its own uid, no capabilities, `no_new_privs`,
//! seccomp, Landlock, rlimits and the systemd unit's isolation.

/// Forbidden first words; entries ending in `*` are prefixes.
#[derive(Debug, Clone)]
pub struct Denylist {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl Denylist {
    /// From configuration entries (`mkfs*` is a prefix, anything else an exact name).
    pub fn new(entries: &[String]) -> Self {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for entry in entries {
            match entry.strip_suffix('*') {
                Some(prefix) => prefixes.push(prefix.to_owned()),
                None => exact.push(entry.clone()),
            }
        }
        Denylist { exact, prefixes }
    }

    /// The forbidden command `cmd` starts with, if any: its first whitespace-separated word,
    /// without leading directories (`/sbin/reboot` is `reboot`).
    pub fn forbidden_word<'a>(&self, cmd: &'a str) -> Option<&'a str> {
        let first = cmd.split_whitespace().next()?;
        let word = first.rsplit('/').next().unwrap_or(first);
        let forbidden = self.exact.iter().any(|entry| entry == word)
            || self
                .prefixes
                .iter()
                .any(|prefix| word.starts_with(prefix.as_str()));
        forbidden.then_some(word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_FORBIDDEN_COMMANDS;

    fn default_list() -> Denylist {
        let entries: Vec<String> = DEFAULT_FORBIDDEN_COMMANDS
            .iter()
            .map(|&word| word.to_owned())
            .collect();
        Denylist::new(&entries)
    }

    #[test]
    fn the_first_word_is_matched_without_its_directories() {
        let list = default_list();
        assert_eq!(list.forbidden_word("reboot"), Some("reboot"));
        assert_eq!(list.forbidden_word("  /sbin/reboot now"), Some("reboot"));
        assert_eq!(list.forbidden_word("sudo ls"), Some("sudo"));
        assert_eq!(list.forbidden_word("\tkill -9 1"), Some("kill"));
    }

    #[test]
    fn prefix_entries_match_every_variant() {
        let list = default_list();
        assert_eq!(list.forbidden_word("mkfs.ext4 /dev/sda"), Some("mkfs.ext4"));
        assert_eq!(list.forbidden_word("/usr/sbin/mkfs -t xfs"), Some("mkfs"));
    }

    #[test]
    fn ordinary_commands_and_later_words_pass() {
        let list = default_list();
        assert_eq!(list.forbidden_word("echo reboot"), None);
        assert_eq!(list.forbidden_word("rm -rf build"), None);
        assert_eq!(list.forbidden_word("rebooted"), None);
        assert_eq!(list.forbidden_word("ls | sudo"), None);
        assert_eq!(list.forbidden_word(""), None);
        assert_eq!(list.forbidden_word("   "), None);
        assert_eq!(list.forbidden_word("sudoku"), None);
    }
}
