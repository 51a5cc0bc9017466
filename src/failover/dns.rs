//! Re-pointing a name: an RFC 2136 UPDATE signed with TSIG that replaces the A record only if
//! it still holds the old address (the prerequisite: a stale leader cannot undo a newer
//! switch), and the authoritative server's answer read back.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};

/// An authoritative server and the TSIG key it accepts updates with.
#[derive(Clone)]
pub struct Authority {
    pub server: SocketAddr,
    pub zone: String,
    pub key_name: String,
    /// The shared secret, decoded from its base64 form.
    pub key: Vec<u8>,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switched {
    /// The record now holds the new address (read back from the server).
    Done,
    /// The record no longer held the old address: someone switched it since; nothing changed.
    Stale,
}

fn name(text: &str) -> Result<Name, String> {
    Name::from_ascii(text.trim_end_matches('.').to_string() + ".").map_err(|e| format!("`{text}`: {e}"))
}

async fn client(authority: &Authority, signed: bool) -> Result<Client<TokioRuntimeProvider>, String> {
    let signer = if signed {
        Some(
            TSigner::new(authority.key.clone(), TsigAlgorithm::HmacSha256, name(&authority.key_name)?, 300)
                .map_err(|e| format!("TSIG key: {e}"))?,
        )
    } else {
        None
    };
    let stream = UdpClientStream::builder(authority.server, TokioRuntimeProvider::new())
        .with_timeout(Some(Duration::from_secs(2)))
        .with_signer(signer)
        .build();
    let (client, background) = Client::from_sender(stream);
    tokio::spawn(background);
    Ok(client)
}

/// The A records the authoritative server answers for `fqdn`.
pub async fn addresses(authority: &Authority, fqdn: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut c = client(authority, false).await?;
    let response =
        c.query(name(fqdn)?, DNSClass::IN, RecordType::A).await.map_err(|e| format!("query {fqdn}: {e}"))?;
    Ok(response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}

/// Replace `fqdn`'s A record `old` by `new` (TTL `ttl`), only if it still holds `old`; then
/// read it back from the server.
pub async fn switch(
    authority: &Authority,
    fqdn: &str,
    old: Ipv4Addr,
    new: Ipv4Addr,
    ttl: u32,
) -> Result<Switched, String> {
    let mut c = client(authority, true).await?;
    let owner = name(fqdn)?;
    let current = Record::from_rdata(owner.clone(), ttl, RData::A(A(old)));
    let replacement = Record::from_rdata(owner, ttl, RData::A(A(new)));
    let response = c
        .compare_and_swap(current, replacement, name(&authority.zone)?)
        .await
        // A wrong key shows as an error here, not as a response code.
        .map_err(|e| format!("UPDATE {fqdn} (TSIG key {}): {e}", authority.key_name))?;
    match response.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXRRSet => return Ok(Switched::Stale),
        code => return Err(format!("UPDATE {fqdn}: {code}")),
    }
    let now = addresses(authority, fqdn).await?;
    if now == [new] {
        Ok(Switched::Done)
    } else {
        Err(format!("UPDATE {fqdn} answered NOERROR but the server answers {now:?}"))
    }
}

/// The server accepts `authority`'s TSIG key for updates of its zone. Sends a signed update
/// whose prerequisite cannot hold (`ferry-key-check.<zone>` holding 0.0.0.0), so nothing
/// changes: a server that checked the key answers NXRRSET; a wrong key is an error.
pub async fn key_accepted(authority: &Authority) -> Result<(), String> {
    let mut c = client(authority, true).await?;
    let owner = name(&format!("ferry-key-check.{}", authority.zone))?;
    let nothing = Record::from_rdata(owner, 5, RData::A(A(Ipv4Addr::UNSPECIFIED)));
    let response = c
        .compare_and_swap(nothing.clone(), nothing, name(&authority.zone)?)
        .await
        // A server that does not know the key answers unsigned (BADKEY/BADSIG), which the
        // client reports as an error it cannot verify.
        .map_err(|e| {
            format!(
                "a signed update with key `{}` was refused: the server does not accept the key (its answer: {e})",
                authority.key_name
            )
        })?;
    match response.metadata.response_code {
        ResponseCode::NXRRSet | ResponseCode::NoError => Ok(()),
        code => Err(format!("a signed update with key {} answered {code}", authority.key_name)),
    }
}

/// Resolve `fqdn` as a client does, with hickory-resolver asking `server` (a fresh resolver:
/// nothing cached), for the client-side check of a switch.
pub async fn resolve(server: SocketAddr, fqdn: &str) -> Result<Vec<Ipv4Addr>, String> {
    use hickory_resolver::Resolver;
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(server.ip(), true, vec![udp])]);
    let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .build()
        .map_err(|e| format!("resolver for {server}: {e}"))?;
    let fqdn = fqdn.trim_end_matches('.').to_string() + ".";
    let answer =
        resolver.lookup_ip(fqdn.as_str()).await.map_err(|e| format!("resolving {fqdn} at {server}: {e}"))?;
    Ok(answer
        .iter()
        .filter_map(|ip| match ip {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
        .collect())
}
