//! Child server processes: spawned with their output in a log file inside their own folder,
//! waited on until ready, killed when dropped (printing the log tail if a test is failing), or
//! detached and recorded by pid for `ferry sandbox down`.

use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::SandboxError;

/// How often readiness is re-probed.
const READY_POLL: Duration = Duration::from_millis(50);
/// Lines of a server's log shown when it fails or a test panics.
const LOG_TAIL_LINES: usize = 40;

/// A server's working folder: a temp dir removed on drop (tests), or a kept path (sandbox).
#[derive(Debug)]
pub enum ServerDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl ServerDir {
    pub fn temp(prefix: &str) -> Result<Self, SandboxError> {
        tempfile::Builder::new()
            .prefix(&format!("ferry-{prefix}-"))
            .tempdir()
            .map(ServerDir::Temp)
            .map_err(|e| SandboxError::io("creating a temp dir", e))
    }

    /// A fresh folder at `path` (emptied if it exists).
    pub fn fresh(path: PathBuf) -> Result<Self, SandboxError> {
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .map_err(|e| SandboxError::io(format!("emptying {}", path.display()), e))?;
        }
        std::fs::create_dir_all(&path)
            .map_err(|e| SandboxError::io(format!("creating {}", path.display()), e))?;
        Ok(ServerDir::Kept(path))
    }

    pub fn path(&self) -> &Path {
        match self {
            ServerDir::Temp(t) => t.path(),
            ServerDir::Kept(p) => p,
        }
    }
}

/// What `sandbox.json` records about a detached process, enough to find it again and to be
/// sure it is still the same process (pids are reused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub program: String,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    pub log: PathBuf,
}

impl ProcessRecord {
    /// True while the recorded process is alive (not a zombie) and still the same process.
    pub fn is_running(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, ticks)) if ticks == self.start_ticks && state != 'Z' && state != 'X')
    }

    /// Send `signal` if (and only if) the recorded process is still running.
    pub fn signal(&self, signal: i32) -> bool {
        if !self.is_running() {
            return false;
        }
        let Ok(pid) = i32::try_from(self.pid) else { return false };
        // SAFETY: kill(2) with a pid we verified is the process we started.
        unsafe { libc::kill(pid, signal) == 0 }
    }
}

/// `(state, start_ticks)` from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

/// A running child server.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    program: String,
    child: Child,
    log: PathBuf,
    detached: bool,
}

impl ServerProcess {
    /// Spawn `cmd` with stdin closed and stdout+stderr appended to `log`. The child gets its own
    /// process group so a Ctrl-C in the terminal that ran `sandbox up` does not reach it.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, SandboxError> {
        let program = Path::new(cmd.get_program())
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| SandboxError::io(format!("opening log {}", log.display()), e))?;
        let err = out.try_clone().map_err(|e| SandboxError::io("cloning a log handle", e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SandboxError::MissingPrograms(vec![program.clone()]),
            _ => SandboxError::io(format!("starting {program} for {name}"), e),
        })?;
        tracing::debug!(%name, %program, pid = child.id(), log = %log.display(), "started");
        Ok(Self { name: name.to_string(), program, child, log: log.to_path_buf(), detached: false })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, LOG_TAIL_LINES)
    }

    /// Poll `probe` until it returns true. Fails early if the process exits, and at `within`.
    pub async fn wait_ready<F, Fut>(&mut self, within: Duration, mut probe: F) -> Result<(), SandboxError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(SandboxError::Exited {
                    name: self.name.clone(),
                    status: status.to_string(),
                    log: self.log.clone(),
                    tail: self.log_tail(),
                });
            }
            if probe().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::NotReady {
                    name: self.name.clone(),
                    after: within,
                    log: self.log.clone(),
                    tail: self.log_tail(),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Stop managing the process: it keeps running after this handle (and this program) is
    /// gone. Returns what `sandbox.json` needs to find it again.
    pub fn detach(mut self) -> ProcessRecord {
        self.detached = true;
        let pid = self.child.id();
        ProcessRecord {
            pid,
            program: self.program.clone(),
            start_ticks: proc_stat(pid).map(|(_, t)| t).unwrap_or(0),
            log: self.log.clone(),
        }
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} ({}) log {} (last {LOG_TAIL_LINES} lines) -----\n{}\n----- end of {} log -----",
                self.name,
                self.program,
                self.log.display(),
                self.log_tail(),
                self.name
            );
        }
        self.kill();
    }
}

/// The last `n` lines of a file ("" if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(file) = File::open(path) else { return String::new() };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port on `ip` that was free a moment ago: `preferred` if it can be bound, else one the
/// kernel picks. The caller starts its server on it straight away; see [`retry_port`].
pub fn pick_port(ip: IpAddr, preferred: Option<u16>) -> Result<u16, SandboxError> {
    if let Some(p) = preferred
        && TcpListener::bind(SocketAddr::new(ip, p)).is_ok()
    {
        return Ok(p);
    }
    TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| SandboxError::io(format!("finding a free port on {ip}"), e))
}

/// How many times a server start is retried when another process took its port between
/// [`pick_port`] and the server's own bind.
const PORT_ATTEMPTS: usize = 3;

/// Run `start` with a freshly picked port until it succeeds or fails for a reason other than
/// the port being taken.
async fn retry_port<T, F, Fut>(ip: IpAddr, preferred: Option<u16>, mut start: F) -> Result<T, SandboxError>
where
    F: FnMut(u16) -> Fut,
    Fut: Future<Output = Result<T, SandboxError>>,
{
    let mut preferred = preferred;
    let mut attempt = 1;
    loop {
        let port = pick_port(ip, preferred)?;
        match start(port).await {
            Err(e) if attempt < PORT_ATTEMPTS && e.is_port_in_use() => {
                tracing::debug!(%ip, port, "port taken during start-up; retrying on another");
                preferred = None;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Start a server on `ip` (`preferred_port` if free): `command` builds the command line for a
/// port (and may write config files for it), the output goes to `log`, and `probe` is polled
/// with the server's address until it answers. Retried on a new port if the port was taken.
pub async fn start_server<C, P, Fut>(
    name: &str,
    ip: IpAddr,
    preferred_port: Option<u16>,
    log: &Path,
    mut command: C,
    probe: P,
) -> Result<(ServerProcess, SocketAddr), SandboxError>
where
    C: FnMut(u16) -> Result<Command, SandboxError>,
    P: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = bool>,
{
    let probe = &probe;
    retry_port(ip, preferred_port, |port| {
        let cmd = command(port);
        async move {
            let addr = SocketAddr::new(ip, port);
            let mut process = ServerProcess::spawn(name, cmd?, log)?;
            process.wait_ready(super::READY_TIMEOUT, || probe(addr)).await?;
            Ok((process, addr))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_that_exits_fails_readiness_with_its_log() {
        let dir = ServerDir::temp("proc").unwrap();
        let log = dir.path().join("sh.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom-from-child; exit 3"]);
        let mut p = ServerProcess::spawn("sh", cmd, &log).unwrap();
        let err = p.wait_ready(Duration::from_secs(10), || async { false }).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exited") && text.contains("boom-from-child"), "got: {text}");
    }

    #[tokio::test]
    async fn detached_records_recognise_their_process_and_only_it() {
        let dir = ServerDir::temp("proc").unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let p = ServerProcess::spawn("sleeper", cmd, &dir.path().join("s.log")).unwrap();
        let record = p.detach();
        assert!(record.is_running(), "{record:?} should be running");
        let impostor = ProcessRecord { start_ticks: record.start_ticks + 1, ..record.clone() };
        assert!(!impostor.is_running(), "a different start time is a different process");
        assert!(!impostor.signal(libc::SIGKILL), "must not signal an impostor");
        assert!(record.signal(libc::SIGKILL));
        // Reap it so it does not linger as a zombie of the test process.
        let mut status = 0;
        // SAFETY: waitpid on our own child's pid.
        unsafe { libc::waitpid(record.pid as i32, &mut status, 0) };
        assert!(!record.is_running(), "killed process still looks alive");
    }

    #[test]
    fn missing_program_is_named() {
        let dir = ServerDir::temp("proc").unwrap();
        let err = ServerProcess::spawn("x", Command::new("ferry-no-such-program"), &dir.path().join("l"))
            .unwrap_err();
        assert!(err.to_string().contains("ferry-no-such-program"), "{err}");
    }
}
