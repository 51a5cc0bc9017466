//! Re-pointing a DNS name through a real Knot server: a TSIG-signed UPDATE guarded by the old
//! address switches the record and is read back; a stale one (the record no longer holds the
//! old address) changes nothing; a wrong key is refused.

use std::net::{IpAddr, Ipv4Addr};

use ferry::failover::dns::{Authority, Switched, addresses, key_accepted, switch};
use ferry::sandbox::DnsServer;

#[tokio::test]
async fn a_guarded_update_switches_the_record_and_a_stale_one_is_refused() {
    let records = vec![("db.east".to_string(), IpAddr::from([127, 77, 1, 1]))];
    let dns = DnsServer::start_temp("psi.test", &records).await.unwrap();
    let authority = Authority {
        server: dns.addr(),
        zone: "psi.test".into(),
        key_name: dns.key().name.clone(),
        key: ferry::model::base64::decode(&dns.key().secret).unwrap(),
    };
    let name = "db.east.psi.test";
    let (old, new) = (Ipv4Addr::new(127, 77, 1, 1), Ipv4Addr::new(127, 77, 1, 2));
    assert_eq!(addresses(&authority, name).await.unwrap(), [old]);

    assert_eq!(switch(&authority, name, old, new, 5).await, Ok(Switched::Done));
    assert_eq!(addresses(&authority, name).await.unwrap(), [new], "the server answers the new address");

    // A stale leader still believes the old address is current: refused, nothing changes.
    let undo = Ipv4Addr::new(127, 77, 1, 9);
    assert_eq!(switch(&authority, name, old, undo, 5).await, Ok(Switched::Stale));
    assert_eq!(addresses(&authority, name).await.unwrap(), [new]);

    // A wrong key is refused.
    let wrong = Authority { key: b"wrong--wrong--wrong--wrong--wrong!".to_vec(), ..authority.clone() };
    assert!(switch(&wrong, name, new, undo, 5).await.is_err(), "a wrong TSIG key must fail");
    assert_eq!(addresses(&authority, name).await.unwrap(), [new]);

    // What `ferry validate` asks: the key is accepted, the wrong one not, and nothing changes.
    assert_eq!(key_accepted(&authority).await, Ok(()));
    let refused = key_accepted(&wrong).await.unwrap_err();
    assert!(refused.contains("refused") || refused.contains("NOTAUTH"), "{refused}");
    assert_eq!(addresses(&authority, name).await.unwrap(), [new]);
    assert!(addresses(&authority, "ferry-key-check.psi.test").await.unwrap_or_default().is_empty());
}
