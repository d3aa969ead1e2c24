//! Shell jobs that need no shell.
//!
//! `/run_sh` runs its command with `/bin/sh -c`. Many commands are one program and plain
//! words (`ls -l`, `python3 main.py`, `true`), and for those the shell's own start — about
//! 0.075 ms here, a seventh of a whole spawn — buys nothing: it would split the words and
//! exec the program, with the environment it was given plus `PWD`. So, as GNU make does with
//! its recipes, such a command is exec'd directly: the words as argv, the program looked up
//! on the job's `PATH`, the environment the shell would have passed on. Everything else goes
//! to the shell.
//!
//! Plain means: only letters, digits and `_ . / : @ % + = , -`, words separated by spaces
//! or tabs — nothing the shell would expand, quote, redirect, glob or read as syntax; the
//! first word neither an assignment nor a builtin or reserved word of `dash` (a builtin
//! may behave unlike the program of the same name: `echo -e`, `pwd`, `kill`), but for
//! `true` and `false` on their own, which do exactly what `/bin/true` and `/bin/false` do.
//!
//! The decision is only a shortcut: when no path of the lookup execs (not found, not
//! executable, a script without `#!`), the child execs the shell after all, so the error
//! text and the exit code (127, 126) are the shell's own. One difference stays: a program
//! killed by a signal ends the job with that signal (`returncode` -N, as `subprocess` and
//! `sh -c prog` report it), where the shell, evaluating the command, would have turned it
//! into exit code 128 + N.

use std::path::{Path, PathBuf};

use crate::sandbox::spawn::DirectExec;

/// `dash`'s builtins and reserved words: a command starting with one goes to the shell.
const SHELL_WORDS: &[&str] = &[
    ".", ":", "[", "alias", "bg", "break", "cd", "chdir", "command", "continue", "echo", "eval",
    "exec", "exit", "export", "false", "fc", "fg", "getopts", "hash", "jobs", "kill", "local",
    "printf", "pwd", "read", "readonly", "return", "set", "shift", "test", "times", "trap", "true",
    "type", "ulimit", "umask", "unalias", "unset", "wait", // builtins
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in", "then",
    "until", "while", // reserved words
];

/// Builtins that, given no arguments, do exactly what the program of the same name does.
const SAME_AS_PROGRAM_ALONE: [&str; 2] = ["true", "false"];

/// Characters that mean nothing to the shell inside a word.
fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"_./:@%+=,-".contains(&byte)
}

/// The words of `command` if it is one program and plain words (see the module docs).
pub fn plain_words(command: &str) -> Option<Vec<&str>> {
    if !command
        .bytes()
        .all(|byte| is_plain(byte) || byte == b' ' || byte == b'\t')
    {
        return None;
    }
    let words: Vec<&str> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    let first = *words.first()?;
    if first.contains('=') {
        return None;
    }
    let shell_word = SHELL_WORDS.contains(&first);
    if shell_word && !(words.len() == 1 && SAME_AS_PROGRAM_ALONE.contains(&first)) {
        return None;
    }
    Some(words)
}

/// Where the shell would look for `program` on `path`, in its order: `program` itself when
/// it names a path; `None` when `path` has an empty or relative entry (the shell would look
/// in the working directory there: left to it).
pub fn lookup(program: &str, path: &str) -> Option<Vec<PathBuf>> {
    if program.contains('/') {
        return Some(vec![PathBuf::from(program)]);
    }
    path.split(':')
        .map(|dir| {
            let dir = Path::new(dir);
            dir.is_absolute().then(|| dir.join(program))
        })
        .collect()
}

/// The direct exec of a shell job's `command`, if it is plain: `env` is the job's own
/// environment (the one its shell would get, without the command), `workdir` its `PWD`.
pub fn direct_exec(command: &str, env: &[(String, String)], workdir: &Path) -> Option<DirectExec> {
    let words = plain_words(command)?;
    let path = env
        .iter()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| value.as_str())?;
    let paths = lookup(words[0], path)?;
    let mut env = env.to_vec();
    env.push(("PWD".to_owned(), workdir.display().to_string()));
    Some(DirectExec {
        paths,
        argv: words.into_iter().map(str::to_owned).collect(),
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_program_with_plain_words_is_run_without_the_shell() {
        for (command, words) in [
            ("true", vec!["true"]),
            ("false", vec!["false"]),
            ("ls -l /tmp", vec!["ls", "-l", "/tmp"]),
            (
                "  python3\tmain.py  --n=3 ",
                vec!["python3", "main.py", "--n=3"],
            ),
            (
                "./build.sh x,y a:b user@host 50% +1",
                vec!["./build.sh", "x,y", "a:b", "user@host", "50%", "+1"],
            ),
            (
                "dd if=/dev/zero of=out bs=1k count=1",
                vec!["dd", "if=/dev/zero", "of=out", "bs=1k", "count=1"],
            ),
        ] {
            assert_eq!(plain_words(command), Some(words), "{command:?}");
        }
    }

    #[test]
    fn anything_the_shell_would_read_as_syntax_goes_to_the_shell() {
        for command in [
            "",
            "   ",
            "echo $HOME",
            "ls *.py",
            "ls ?",
            "ls [ab]",
            "cat < in",
            "ls > out",
            "a | b",
            "a; b",
            "a && b",
            "a & ",
            "(ls)",
            "ls ~",
            "echo 'x'",
            "echo \"x\"",
            "echo a\\ b",
            "ls # comment",
            "ls\nrm x",
            "echo `id`",
            "echo {a,b}",
            "ls !x",
            "ls é",
            "FOO=1 env",
            "A=1",
        ] {
            assert_eq!(plain_words(command), None, "{command:?}");
        }
    }

    #[test]
    fn builtins_and_reserved_words_go_to_the_shell_but_true_and_false_alone() {
        for command in [
            "echo hi",
            "echo",
            "pwd",
            "cd /",
            "kill 1",
            "printf x",
            "test -f x",
            "exit 3",
            "exec ls",
            "command ls",
            "true --help",
            "false x",
            "if",
            "while",
            "for",
            "{",
            "!",
            ".",
            ":",
            "read",
            "ulimit -n",
        ] {
            assert_eq!(plain_words(command), None, "{command:?}");
        }
        assert_eq!(plain_words("true"), Some(vec!["true"]));
        assert_eq!(plain_words(" false "), Some(vec!["false"]));
    }

    #[test]
    fn the_lookup_follows_path_in_order_and_leaves_relative_entries_to_the_shell() {
        assert_eq!(
            lookup("true", "/usr/local/bin:/usr/bin:/bin"),
            Some(vec![
                PathBuf::from("/usr/local/bin/true"),
                PathBuf::from("/usr/bin/true"),
                PathBuf::from("/bin/true"),
            ])
        );
        assert_eq!(
            lookup("./run", "/usr/bin"),
            Some(vec![PathBuf::from("./run")])
        );
        assert_eq!(lookup("sub/run", ""), Some(vec![PathBuf::from("sub/run")]));
        assert_eq!(lookup("ls", "/usr/bin::/bin"), None);
        assert_eq!(lookup("ls", "bin:/usr/bin"), None);
        assert_eq!(lookup("ls", ""), None);
    }

    #[test]
    fn the_direct_exec_gets_the_shells_environment_with_pwd() {
        let env = vec![
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            ("HOME".to_owned(), "/w".to_owned()),
        ];
        let direct = direct_exec("ls -a", &env, Path::new("/w")).unwrap();
        assert_eq!(direct.argv, ["ls", "-a"]);
        assert_eq!(
            direct.paths,
            [PathBuf::from("/usr/bin/ls"), PathBuf::from("/bin/ls")]
        );
        assert_eq!(
            direct.env.last(),
            Some(&("PWD".to_owned(), "/w".to_owned()))
        );
        assert_eq!(direct.env.len(), 3);
        assert!(direct_exec("ls | wc", &env, Path::new("/w")).is_none());
        assert!(
            direct_exec("ls", &env[1..], Path::new("/w")).is_none(),
            "no PATH"
        );
    }
}
