//! The command line, as clap types. Completions and the man page are generated from these
//! same definitions (`noxctl completions`, `noxctl man`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Talk to a nox service: run Python and shell jobs in its sandbox, move files in your
/// workspace, check its health.
///
/// The URL and token come from --url/--token, then NOX_URL/NOX_API_TOKEN, then
/// ~/.config/nox/noxctl.toml (`url = "..."`, `token = "..."`), then /etc/nox/api-token when
/// readable; the URL defaults to http://127.0.0.1:8080.
#[derive(Debug, Parser)]
#[command(name = "noxctl", version, propagate_version = true)]
pub struct Cli {
    /// Base URL of the nox API (plain http://).
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// API token (prefer NOX_API_TOKEN: a flag is visible in the process list).
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print the server's JSON reply instead of human-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print /health (exit status 1 unless the service is ready).
    Health,
    /// The executor's state and its sandbox layers, as tables.
    Status,
    /// Upload LOCAL (`-`: standard input) to REMOTE in the workspace (a REMOTE ending in `/`
    /// gets LOCAL's file name).
    Put { local: PathBuf, remote: String },
    /// Download REMOTE to LOCAL (standard output when LOCAL is omitted or `-`).
    Get {
        remote: String,
        local: Option<PathBuf>,
    },
    /// List the workspace's files under PREFIX.
    Ls { prefix: Option<String> },
    /// Delete REMOTE (a file or an empty directory).
    Rm { remote: String },
    /// Run Python: CODE, or the file at that path if one exists, or standard input for `-`.
    /// The exit status is the job's (a signal n gives 128+n, a timeout 124).
    Runpy {
        /// Code, a path to a file of code, or `-`.
        source: String,
        /// The name the code is saved as in the workspace.
        #[arg(long, default_value = "run.py", value_name = "NAME")]
        filename: String,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Run a shell command line (`sh -c`); words are joined with spaces. The exit status is
    /// the job's (a signal n gives 128+n, a timeout 124).
    Runsh {
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) on standard output.
    Man,
}

/// Options of the run commands.
#[derive(Debug, Clone, Default, Args)]
pub struct JobArgs {
    /// Give this file (`-`: noxctl's own standard input) to the job on its standard input.
    #[arg(long, value_name = "PATH", conflicts_with = "stdin")]
    pub stdin_file: Option<PathBuf>,
    /// Give this text to the job on its standard input.
    #[arg(long, value_name = "TEXT")]
    pub stdin: Option<String>,
    /// Wall-clock timeout in seconds (may only lower the server's ceiling).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

/// The clap command, for completions and the man page.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("noxctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn runsh_joins_its_words_and_keeps_their_dashes() {
        let cli = parse(&["runsh", "ls", "-la", "/tmp"]).unwrap();
        let Command::Runsh { command, job } = cli.command else {
            panic!("not runsh")
        };
        assert_eq!(command, ["ls", "-la", "/tmp"]);
        assert!(job.timeout.is_none());
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let cli = parse(&["--url", "http://h:1", "runpy", "print(1)", "--json"]).unwrap();
        assert_eq!(cli.url.as_deref(), Some("http://h:1"));
        assert!(cli.json);
        let cli = parse(&["runpy", "-", "--timeout", "2.5", "--stdin", "x"]).unwrap();
        let Command::Runpy {
            source,
            filename,
            job,
        } = cli.command
        else {
            panic!("not runpy")
        };
        assert_eq!((source.as_str(), filename.as_str()), ("-", "run.py"));
        assert_eq!(job.timeout, Some(2.5));
        assert_eq!(job.stdin.as_deref(), Some("x"));
    }

    #[test]
    fn stdin_and_stdin_file_exclude_each_other() {
        assert!(parse(&["runpy", "x", "--stdin", "a", "--stdin-file", "f"]).is_err());
        assert!(parse(&["runsh"]).is_err());
    }

    #[test]
    fn get_writes_to_standard_output_without_a_local_path() {
        let cli = parse(&["get", "dir/a.txt"]).unwrap();
        assert!(matches!(cli.command, Command::Get { local: None, .. }));
        let cli = parse(&["completions", "fish"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Completions {
                shell: clap_complete::Shell::Fish
            }
        ));
    }
}
