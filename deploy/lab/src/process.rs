//! Running programs: the one command helper every other module uses ([`Cmd`]), background
//! daemons started in their own session and tracked by PID ([`Daemon`]), and ending them safely
//! (verify a PID is still the program we started, SIGTERM, then SIGKILL).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How long [`Daemon::terminate`] waits after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// A command to run, optionally inside a network namespace, with a good error on failure
/// (the command line and its stderr).
#[derive(Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_clear: bool,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
    join_netns: Option<String>,
}

impl Cmd {
    /// A command running `program`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            stdin: None,
            timeout: None,
            join_netns: None,
        }
    }

    /// A command running `program` with its network namespace set to `netns` (setns before
    /// exec) but, unlike [`Cmd::in_netns`], in this process's mount namespace: namespaces it
    /// creates with `ip netns add` are then visible to everyone (`ip netns exec` gives its
    /// child a private mount namespace, where such mounts would stay).
    pub fn joining_netns(netns: &str, program: impl AsRef<OsStr>) -> Self {
        let mut cmd = Cmd::new(program);
        cmd.join_netns = Some(netns.to_string());
        cmd
    }

    /// A command running `program` inside network namespace `netns` (`ip netns exec`).
    pub fn in_netns(netns: &str, program: impl AsRef<OsStr>) -> Self {
        Cmd::new(ip_binary())
            .args(["netns", "exec", netns])
            .arg(program)
    }

    /// `ip ARGS...` (iproute2).
    pub fn ip<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Cmd::new(ip_binary()).args(args)
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Starts from an empty environment (then [`Cmd::env`] adds to it).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// Feeds `bytes` on stdin (otherwise stdin is `/dev/null`).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Kills the command if it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if self.env_clear {
            cmd.env_clear();
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(netns) = &self.join_netns {
            let path = Path::new(crate::netns::NETNS_DIR).join(netns);
            match File::open(&path) {
                Ok(file) => {
                    // SAFETY: setns(2) is async-signal-safe; the file is owned by the closure.
                    unsafe {
                        cmd.pre_exec(move || {
                            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                                .map_err(std::io::Error::from)
                        });
                    }
                }
                // Spawning then fails with this error instead of running outside the netns.
                Err(e) => {
                    let kind = e.kind();
                    // SAFETY: builds an io::Error from a kind; no allocation, no parent memory.
                    unsafe {
                        cmd.pre_exec(move || Err(std::io::Error::from(kind)));
                    }
                }
            }
        }
        cmd
    }

    /// Runs the command and collects its output, whatever its exit status.
    pub fn output(self) -> Result<Output> {
        let display = self.display();
        let mut cmd = self.command();
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{display}`"))?;
        let stdin = child.stdin.take().zip(self.stdin).map(|(mut pipe, bytes)| {
            // A child that exits without reading gives EPIPE: its output tells the story.
            thread::spawn(move || drop(pipe.write_all(&bytes)))
        });
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = match self.timeout {
            None => child.wait(),
            Some(timeout) => wait_bounded(&mut child, timeout),
        }
        .with_context(|| format!("waiting for `{display}`"))?;
        if let Some(writer) = stdin {
            let _ = writer.join();
        }
        let output = Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        };
        if let (Some(timeout), Some(Signal::SIGKILL)) = (self.timeout, signal_of(status)) {
            bail!(
                "`{display}` did not finish within {}{}",
                humantime::format_duration(timeout),
                stderr_suffix(&output.stderr)
            );
        }
        Ok(output)
    }

    /// Runs the command; fails unless it exits 0. Returns its stdout.
    pub fn run(self) -> Result<String> {
        let display = self.display();
        let output = self.output()?;
        check_status(&display, &output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs the command with the terminal attached and returns its exit code (128 + signal
    /// number for a signal), like a shell would.
    pub fn interactive(self) -> Result<i32> {
        let display = self.display();
        let status = self
            .command()
            .status()
            .with_context(|| format!("cannot start `{display}`"))?;
        Ok(exit_code(status))
    }

    /// Starts the command in the background, in its own session, stdin from `/dev/null` and
    /// stdout+stderr appended to `log`. The PID survives `ip netns exec` (it execs).
    pub fn spawn_daemon(self, log: &Path) -> Result<Daemon> {
        let display = self.display();
        let binary = self.daemon_binary();
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating log fd")?)
            .stderr(log_file);
        // SAFETY: setsid() is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{display}`"))?;
        let pid = child.id() as i32;
        let start_time = proc_start_time(pid).unwrap_or(0);
        Ok(Daemon {
            pid,
            binary,
            start_time,
        })
    }

    /// Starts the command with its stdout piped to the caller (a stream to read, e.g. a watch),
    /// stdin from `/dev/null`, stderr inherited. It is killed (SIGKILL) if the calling thread
    /// ends first, so a stream never outlives its reader.
    pub fn spawn_stream(self) -> Result<Child> {
        let display = self.display();
        let mut cmd = self.command();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no parent memory.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        cmd.spawn()
            .with_context(|| format!("cannot start `{display}`"))
    }

    /// The program a daemon ends up as: the one after `ip netns exec NS`, else the program.
    fn daemon_binary(&self) -> PathBuf {
        let via_ip = Path::new(&self.program).file_name() == Some(OsStr::new("ip"))
            && self.args.len() >= 4
            && self.args[0] == "netns"
            && self.args[1] == "exec";
        PathBuf::from(if via_ip { &self.args[3] } else { &self.program })
    }
}

/// Fails with the command line, exit status and stderr unless `output` is a success.
pub fn check_status(display: &str, output: &Output) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    let mut detail = stderr_suffix(&output.stderr);
    if detail.is_empty() {
        detail = stderr_suffix(&output.stdout);
    }
    bail!(
        "`{display}` failed ({}){detail}",
        describe_status(output.status)
    )
}

fn stderr_suffix(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// `exit code 2` / `killed by SIGKILL`.
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), signal_of(status)) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by {sig}"),
        (None, None) => format!("{status}"),
    }
}

fn signal_of(status: ExitStatus) -> Option<Signal> {
    status.signal().and_then(|s| Signal::try_from(s).ok())
}

/// A shell's view of an exit status: the code, or 128 + signal number.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child`, killing it after `timeout`. Polls from every millisecond up to every
/// 20: a short command (a CNI call the bench times) is seen to end within a millisecond or
/// so, a long one costs few wake-ups.
fn wait_bounded(child: &mut Child, timeout: Duration) -> std::io::Result<ExitStatus> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut poll = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // Our own child, killed through its handle: its PID cannot have been reused.
            child.kill()?;
            return child.wait();
        }
        thread::sleep(poll);
        // Every millisecond for the first 200 ms: a doubling poll would round a 16 ms call
        // up to 31 ms, and benchmarks time calls through here.
        if start.elapsed() > Duration::from_millis(200) {
            poll = (poll * 2).min(Duration::from_millis(20));
        }
    }
}

/// Quotes `s` for display if it has shell metacharacters.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b':' | b'=' | b',' | b'@' | b'+'
                )
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A background process the lab started: its PID, the binary it runs, and its start time
/// (from `/proc/PID/stat`), which together tell it apart from a later process reusing the PID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daemon {
    /// The process id.
    pub pid: i32,
    /// The binary it was started as (absolute path).
    pub binary: PathBuf,
    /// Start time in clock ticks since boot; 0 if unknown.
    pub start_time: u64,
}

impl Daemon {
    /// Is the process we started still running (same PID and start time, not a zombie)?
    pub fn is_running(&self) -> bool {
        self.reap();
        let same_process = if self.start_time == 0 {
            self.is_ours()
        } else {
            proc_start_time(self.pid) == Some(self.start_time)
        };
        same_process && proc_state(self.pid).is_some_and(|s| s != 'Z' && s != 'X')
    }

    /// Is it safe to signal this PID: still running, and `/proc/PID/cmdline` still shows the
    /// binary we started?
    pub fn is_ours(&self) -> bool {
        let same_start = self.start_time == 0 || proc_start_time(self.pid) == Some(self.start_time);
        same_start
            && proc_state(self.pid).is_some_and(|s| s != 'Z' && s != 'X')
            && proc_cmdline(self.pid).is_some_and(|argv| cmdline_runs(&argv, &self.binary))
    }

    /// Sends `signal` if the PID is still ours; `Ok(false)` if it was already gone.
    pub fn signal(&self, signal: Signal) -> Result<bool> {
        self.reap();
        if !self.is_ours() {
            return Ok(false);
        }
        match kill(Pid::from_raw(self.pid), signal) {
            Ok(()) => Ok(true),
            Err(Errno::ESRCH) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("sending {signal} to pid {}", self.pid)),
        }
    }

    /// Waits up to `timeout` for the process to exit (reaping it if it is our child).
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after [`TERM_GRACE`], if the PID is still ours. `Ok(false)` if
    /// it was not running.
    pub fn terminate(&self) -> Result<bool> {
        self.reap();
        if !self.is_ours() {
            return Ok(false);
        }
        terminate_pid(self.pid, || self.is_running())
    }

    /// Collects our child's exit status if it has exited (no-op for non-children).
    fn reap(&self) {
        let _ = waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG));
    }
}

/// SIGTERM `pid`, wait up to [`TERM_GRACE`] while `alive()`, then SIGKILL and wait 2 s more.
/// `Ok(false)` if it was not alive to begin with.
pub fn terminate_pid(pid: i32, alive: impl Fn() -> bool) -> Result<bool> {
    let reap_alive = || {
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        alive()
    };
    if !reap_alive() {
        return Ok(false);
    }
    for (signal, wait) in [
        (Signal::SIGTERM, TERM_GRACE),
        (Signal::SIGKILL, Duration::from_secs(2)),
    ] {
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(true),
            Err(e) => return Err(e).with_context(|| format!("sending {signal} to pid {pid}")),
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if !reap_alive() {
                return Ok(true);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    bail!("pid {pid} survived SIGKILL")
}

/// Does `argv` (from `/proc/PID/cmdline`) run `binary`: directly, through a script
/// interpreter (`python3 binary ...`, possibly via a wrapper such as a pyenv shim), or still as
/// `ip netns exec NS binary ...` in the instant before `ip` execs?
pub fn cmdline_runs(argv: &[String], binary: &Path) -> bool {
    let is_binary = |arg: &String| Path::new(arg) == binary;
    if argv.iter().take(3).any(is_binary) {
        return true;
    }
    match argv {
        [ip, netns, exec, _, target, ..] => {
            Path::new(ip).file_name() == Some(OsStr::new("ip"))
                && netns == "netns"
                && exec == "exec"
                && is_binary(target)
        }
        _ => false,
    }
}

/// The argument vector of `pid`, or `None` if it is gone (or a kernel thread).
pub fn proc_cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Fields of `/proc/PID/stat` after the command name, which may contain spaces and parens.
fn proc_stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_fields(&stat)
}

fn parse_stat_fields(stat: &str) -> Option<Vec<String>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The state letter of `pid` (`R`, `S`, `Z`, ...).
pub fn proc_state(pid: i32) -> Option<char> {
    proc_stat_fields(pid)?.first()?.chars().next()
}

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    // Fields after the name start at field 3, so field 22 is index 19.
    proc_stat_fields(pid)?.get(19)?.parse().ok()
}

/// Every PID whose network namespace has one of `inodes` (from `/proc/PID/ns/net`).
pub fn pids_in_netns(inodes: &[u64]) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let mut pids: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|l| parse_ns_link(&l.to_string_lossy()))
                .is_some_and(|ino| inodes.contains(&ino))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Parses `net:[4026532281]` into the inode number.
pub fn parse_ns_link(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// iproute2's `ip`, resolved once, so that commands run with a cleared environment (CNI
/// plugins) still find it.
pub fn ip_binary() -> &'static Path {
    static IP: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IP.get_or_init(|| which("ip").unwrap_or_else(|| PathBuf::from("ip")))
}

/// Looks `program` up in `PATH`, for recording the absolute path of a daemon we start.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| crate::spec::is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd_reports_command_line_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .unwrap_err()
            .to_string();
        assert!(err.contains("sh -c 'echo oops >&2; exit 3'"), "{err}");
        assert!(err.contains("exit code 3"), "{err}");
        assert!(err.contains("oops"), "{err}");
    }

    #[test]
    fn cmd_feeds_stdin_and_clears_env() {
        let out = Cmd::new("/bin/sh")
            .args(["-c", "cat; echo \"[$A][$HOME]\""])
            .env_clear()
            .env("A", "1")
            .stdin("in:")
            .run()
            .unwrap();
        assert_eq!(out, "in:[1][]\n");
    }

    #[test]
    fn cmd_timeout_kills() {
        let started = Instant::now();
        let err = Cmd::new("sleep")
            .arg("5")
            .timeout(Duration::from_millis(200))
            .output()
            .unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn netns_cmd_line() {
        let cmd = Cmd::in_netns("lab-node1", "/bin/fabricd").arg("--x");
        assert_eq!(
            cmd.display(),
            format!(
                "{} netns exec lab-node1 /bin/fabricd --x",
                ip_binary().display()
            )
        );
        assert_eq!(cmd.daemon_binary(), PathBuf::from("/bin/fabricd"));
        assert_eq!(
            Cmd::new("/usr/bin/etcd").daemon_binary(),
            PathBuf::from("/usr/bin/etcd")
        );
    }

    #[test]
    fn cmdline_matching() {
        let bin = Path::new("/t/fabricd");
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(cmdline_runs(&argv("/t/fabricd --iface eth0"), bin));
        assert!(cmdline_runs(&argv("python3 /t/fabricd --iface eth0"), bin));
        assert!(cmdline_runs(
            &argv("ip netns exec lab-node1 /t/fabricd --x"),
            bin
        ));
        assert!(!cmdline_runs(&argv("/t/fabricctl leases"), bin));
        assert!(!cmdline_runs(
            &argv("ip netns exec lab-node1 /t/other"),
            bin
        ));
        assert!(!cmdline_runs(&[], bin));
    }

    #[test]
    fn stat_parsing_handles_odd_names() {
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0";
        let f = parse_stat_fields(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[19], "98765");
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[1]"), None);
    }

    #[test]
    fn daemon_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let sleep = which("sleep").unwrap();
        let d = Cmd::new(&sleep).arg("30").spawn_daemon(&log).unwrap();
        assert_eq!(d.binary, sleep);
        assert!(d.start_time > 0);
        assert!(d.is_running());
        let impostor = Daemon {
            start_time: d.start_time + 1,
            ..d.clone()
        };
        assert!(!impostor.is_ours());
        assert!(d.terminate().unwrap());
        assert!(!d.is_running());
        assert!(!d.terminate().unwrap());
    }

    #[test]
    fn tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "1\n2\n3\n4\n").unwrap();
        assert_eq!(tail(&p, 2), "3\n4");
        assert_eq!(tail(&p, 10), "1\n2\n3\n4");
        assert_eq!(tail(&dir.path().join("none"), 3), "");
    }
}
