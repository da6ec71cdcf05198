//! The netfilter commands fabricd drives (`nft`, `iptables-restore`): one way
//! to feed a command its input and report its refusal, and one way to run such blocking work
//! off the async runtime's threads.

use std::io::Write;
use std::process::{Command, Stdio};

/// Why a command did not do what it was given.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command could not be run or fed (not installed, most often).
    #[error("cannot run {program} (is it installed?): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The command ran and refused its input; its stderr.
    #[error("{program} refused the input: {stderr}")]
    Refused { program: String, stderr: String },
}

/// Runs `program args` with `input` on its stdin; fails with its stderr if it fails.
pub fn feed(program: &str, args: &[&str], input: &str) -> Result<(), CommandError> {
    let spawn = |source| CommandError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let fed = stdin.write_all(input.as_bytes());
    // Closed before waiting, so the command sees the end of its input.
    drop(stdin);
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        // Its stderr says more than the broken pipe a write into it may have met.
        return Err(CommandError::Refused {
            program: program.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    fed.map_err(spawn)
}

/// Runs `work` (commands, mostly) on tokio's blocking pool, so that tasks woken meanwhile
/// (a CNI ADD waiting for the policy view, say) run at once rather than after it. A panic
/// in `work` goes on in the caller.
pub async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking work cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_reaches_the_command_and_a_refusal_carries_its_stderr() {
        feed(
            "sh",
            &["-c", "read line && test \"$line\" = hello"],
            "hello\n",
        )
        .unwrap();
        let err = feed("sh", &["-c", "cat >/dev/null; echo nope >&2; exit 3"], "x").unwrap_err();
        assert!(
            matches!(&err, CommandError::Refused { program, stderr } if program == "sh" && stderr == "nope"),
            "{err}"
        );
        let err = feed("fabric-no-such-command", &[], "").unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    }

    #[tokio::test]
    async fn blocking_work_runs_off_the_runtime_and_returns_its_value() {
        let runtime_thread = std::thread::current().id();
        let (value, thread) = off_runtime(|| (42, std::thread::current().id())).await;
        assert_eq!(value, 42);
        assert_ne!(thread, runtime_thread);
    }
}
