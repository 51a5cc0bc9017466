//! Load-balancer members: drain or disable on Down, re-enable on Up, each change read back.
//! HAProxy through its runtime API (`set server B/S state ready|drain|maint`, confirmed with
//! `show servers state B`).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{DownState, HaproxyApi, haproxy_api};

/// `srv_admin_state` bits (HAProxy's `enum srv_admin`).
const ADMIN_FMAINT: u32 = 0x01;
const ADMIN_IMAINT: u32 = 0x02;
const ADMIN_FDRAIN: u32 = 0x08;
/// `srv_op_state` 2: running.
const OP_RUNNING: u32 = 2;

/// One server line of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub name: String,
    /// `srv_addr` and `srv_port`: where it sends traffic.
    pub address: String,
    pub port: Option<u16>,
    pub op_state: u32,
    pub admin_state: u32,
}

impl ServerState {
    /// Takes traffic: running and neither in maintenance nor draining.
    pub fn serving(&self) -> bool {
        self.op_state == OP_RUNNING && self.admin_state & (ADMIN_FMAINT | ADMIN_IMAINT | ADMIN_FDRAIN) == 0
    }
}

/// One command over the runtime API; HAProxy answers and closes the connection.
pub async fn command(api: &str, command: &str) -> Result<String, String> {
    async fn exchange(mut s: impl AsyncRead + AsyncWrite + Unpin, command: &str) -> std::io::Result<String> {
        s.write_all(format!("{command}\n").as_bytes()).await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        Ok(answer)
    }
    let answer = async {
        match haproxy_api(api) {
            HaproxyApi::Unix(path) => exchange(tokio::net::UnixStream::connect(&path).await?, command).await,
            HaproxyApi::Tcp(addr) => exchange(tokio::net::TcpStream::connect(addr).await?, command).await,
        }
    }
    .await;
    answer.map_err(|e| format!("haproxy runtime API {api}: {e}"))
}

/// The servers of `backend`.
pub async fn servers(api: &str, backend: &str) -> Result<Vec<ServerState>, String> {
    let answer = command(api, &format!("show servers state {backend}")).await?;
    Ok(parse_servers(&answer, backend))
}

/// Parse `show servers state` (format 1: `be_id be_name srv_id srv_name srv_addr srv_op_state
/// srv_admin_state …`, `srv_port` 19th).
pub fn parse_servers(answer: &str, backend: &str) -> Vec<ServerState> {
    answer
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&backend)).then_some(())?;
            Some(ServerState {
                name: f.get(3)?.to_string(),
                address: f.get(4)?.to_string(),
                port: f.get(18).and_then(|p| p.parse().ok()),
                op_state: f.get(5)?.parse().ok()?,
                admin_state: f.get(6)?.parse().ok()?,
            })
        })
        .collect()
}

/// What a member change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Set and read back.
    Done,
    /// Already so: nothing to do.
    Already,
    /// Refused: it is the last member serving.
    LastMember,
}

/// Take `server` out of `backend` (`drain` or `maint`), unless it is the last one serving.
pub async fn take_out(api: &str, backend: &str, server: &str, how: DownState) -> Result<Outcome, String> {
    let before = servers(api, backend).await?;
    let me =
        before.iter().find(|s| s.name == server).ok_or_else(|| format!("no server {backend}/{server}"))?;
    let bit = match how {
        DownState::Drain => ADMIN_FDRAIN,
        DownState::Maint => ADMIN_FMAINT,
    };
    if me.admin_state & bit != 0 {
        return Ok(Outcome::Already);
    }
    if !before.iter().any(|s| s.name != server && s.serving()) {
        return Ok(Outcome::LastMember);
    }
    set(api, backend, server, how.as_str(), |s| s.admin_state & bit != 0).await
}

/// Put `server` back into `backend`.
pub async fn put_back(api: &str, backend: &str, server: &str) -> Result<Outcome, String> {
    let before = servers(api, backend).await?;
    let me =
        before.iter().find(|s| s.name == server).ok_or_else(|| format!("no server {backend}/{server}"))?;
    if me.admin_state & (ADMIN_FMAINT | ADMIN_FDRAIN) == 0 {
        return Ok(Outcome::Already);
    }
    set(api, backend, server, "ready", |s| s.admin_state & (ADMIN_FMAINT | ADMIN_FDRAIN) == 0).await
}

async fn set(
    api: &str,
    backend: &str,
    server: &str,
    state: &str,
    confirmed: impl Fn(&ServerState) -> bool,
) -> Result<Outcome, String> {
    let answer = command(api, &format!("set server {backend}/{server} state {state}")).await?;
    if !answer.trim().is_empty() {
        return Err(format!("set server {backend}/{server} state {state}: {}", answer.trim()));
    }
    let after = servers(api, backend).await?;
    match after.iter().find(|s| s.name == server) {
        Some(s) if confirmed(s) => Ok(Outcome::Done),
        Some(s) => {
            Err(format!("{backend}/{server} reads back admin state {:#x} after `{state}`", s.admin_state))
        }
        None => Err(format!("{backend}/{server} vanished")),
    }
}

/// Make the server of `backend` that sends to `active` the only one in service (`ready`), every
/// other one `maint`: how clients behind an HAProxy backend follow a promoted primary. Read
/// back.
pub async fn make_active(api: &str, backend: &str, active: std::net::SocketAddr) -> Result<(), String> {
    let before = servers(api, backend).await?;
    let is_active = |s: &ServerState| s.address == active.ip().to_string() && s.port == Some(active.port());
    if !before.iter().any(is_active) {
        return Err(format!("no server of backend {backend} sends to {active}"));
    }
    // The new one first: the backend is never left with none.
    let mut ordered: Vec<&ServerState> = before.iter().filter(|s| is_active(s)).collect();
    ordered.extend(before.iter().filter(|s| !is_active(s)));
    for server in ordered {
        let state = if is_active(server) { "ready" } else { "maint" };
        let answer = command(api, &format!("set server {backend}/{} state {state}", server.name)).await?;
        if !answer.trim().is_empty() {
            return Err(format!("set server {backend}/{} state {state}: {}", server.name, answer.trim()));
        }
    }
    let after = servers(api, backend).await?;
    for s in &after {
        let in_maint = s.admin_state & ADMIN_FMAINT != 0;
        if is_active(s) == in_maint {
            return Err(format!("{backend}/{} reads back admin state {:#x}", s.name, s.admin_state));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_state_lines_are_read_by_field() {
        let answer = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n\
                      3 app 1 app-1 127.0.0.1 2 0 1 1 10 6 3 4 6 0 0 0 - 8080 - 0 0 - - 0\n\
                      3 app 2 app-2 127.0.0.1 2 8 1 1 10 6 3 4 6 0 0 0 - 8081 - 0 0 - - 0\n\
                      3 app 3 app-3 127.0.0.1 0 0 1 1 10 6 3 4 6 0 0 0 - 8082 - 0 0 - - 0\n\
                      4 other 1 x 127.0.0.1 2 0 1 1 10 6 3 4 6 0 0 0 - 9 - 0 0 - - 0\n";
        let s = parse_servers(answer, "app");
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().map(|s| s.serving()).collect::<Vec<_>>(), [true, false, false], "draining, down");
    }
}
