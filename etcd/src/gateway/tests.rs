//! Finding a worker's members: settings, discovery answers, and a real 3-member etcd.

use std::time::Duration;

use super::*;
use crate::testutil::{canned_routes, free_port, TestEtcd};

const T: Duration = Duration::from_secs(5);

fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn settings_name_the_members_and_the_listen_address() {
    let cfg = GatewayConfig::from_env(env(&[(
        "ETCD_INITIAL_CLUSTER",
        "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380/",
    )]))
    .unwrap();
    assert_eq!(cfg.listen, DEFAULT_LISTEN);
    assert_eq!(
        cfg.seeds,
        Seeds::PeerUrls(vec![
            "http://10.0.0.1:2380".into(),
            "http://10.0.0.2:2380".into()
        ])
    );
    // The discovery URL wins, as it does for a member; the first listen URL is the address.
    let cfg = GatewayConfig::from_env(env(&[
        ("ETCD_INITIAL_CLUSTER", "a=http://10.0.0.1:2380"),
        ("ETCD_DISCOVERY", "http://10.0.2.2:8470/discovery/abc/"),
        (
            "ETCD_LISTEN_CLIENT_URLS",
            "http://0.0.0.0:2379,http://127.0.0.1:4001",
        ),
    ]))
    .unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:2379");
    assert_eq!(
        cfg.seeds,
        Seeds::Discovery("http://10.0.2.2:8470/discovery/abc".into())
    );
}

#[test]
fn settings_without_members_or_with_a_bad_address_say_what_to_write() {
    let e = GatewayConfig::from_env(env(&[])).unwrap_err().to_string();
    assert!(e.contains("`discovery` or `initial-cluster`"), "{e}");
    let e = GatewayConfig::from_env(env(&[("ETCD_INITIAL_CLUSTER", "nobody")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("names no member"), "{e}");
    let e = GatewayConfig::from_env(env(&[
        ("ETCD_INITIAL_CLUSTER", "a=http://10.0.0.1:2380"),
        ("ETCD_LISTEN_CLIENT_URLS", "unix:///run/etcd.sock"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("listen-client-urls \"unix:///run/etcd.sock\""),
        "{e}"
    );
}

#[test]
fn a_discovery_directory_gives_the_registered_peer_urls() {
    let url = canned_routes(vec![(
        "/discovery/abc",
        r#"{"action":"get","node":{"key":"/discovery/abc","dir":true,"nodes":[
            {"key":"/discovery/abc/_config","dir":true},
            {"key":"/discovery/abc/1a","value":"n1=http://10.77.0.1:2380","createdIndex":2},
            {"key":"/discovery/abc/2b","value":"n2=http://10.77.0.2:2380,n2=http://10.77.1.2:2380","createdIndex":3}
        ]}}"#
            .to_string(),
    )]);
    let urls = peer_urls(&Seeds::Discovery(url), T).unwrap();
    assert_eq!(
        urls,
        [
            "http://10.77.0.1:2380",
            "http://10.77.0.2:2380",
            "http://10.77.1.2:2380"
        ]
    );
}

#[test]
fn a_missing_empty_or_unreachable_discovery_url_is_said_plainly() {
    let url = canned_routes(vec![]);
    let e = peer_urls(&Seeds::Discovery(url.clone()), T)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&url) && e.contains("does not exist"), "{e}");
    let url = canned_routes(vec![(
        "/discovery/abc",
        r#"{"action":"get","node":{"key":"/discovery/abc","dir":true}}"#.to_string(),
    )]);
    let e = peer_urls(&Seeds::Discovery(url), T)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no member registered yet"), "{e}");
    let url = canned_routes(vec![("/discovery/abc", "<html>a login page</html>".into())]);
    let e = peer_urls(&Seeds::Discovery(url), T)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("did not answer with etcd's discovery JSON"),
        "{e}"
    );
    let url = format!("http://127.0.0.1:{}/discovery/abc", free_port());
    let e = peer_urls(&Seeds::Discovery(url.clone()), T)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&url), "{e}");
}

#[test]
fn the_members_client_urls_come_from_any_peer_that_answers() {
    let cluster = TestEtcd::cluster(3);
    let mut want: Vec<String> = cluster.iter().map(|m| m.url.clone()).collect();
    want.sort();
    // The first peer URL is down: the next one answers for the whole cluster.
    let peers = vec![
        format!("http://127.0.0.1:{}", free_port()),
        cluster[1].peer_url.clone(),
    ];
    assert_eq!(client_urls(&peers, T).unwrap(), want);
    assert_eq!(current_client_urls(&want, T).unwrap(), want);
    let e = client_urls(&[format!("http://127.0.0.1:{}", free_port())], T)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no member of the cluster answered"), "{e}");
}
