//! What a discovery URL says about this machine, from the answers a discovery service gives.

use std::time::Duration;

use super::*;
use crate::testutil::{canned_routes, free_port};

const T: Duration = Duration::from_secs(5);
const SIZE_3: &str =
    r#"{"action":"get","node":{"key":"/discovery/abc/_config/size","value":"3","createdIndex":1}}"#;

fn dir(values: &[&str]) -> String {
    let nodes: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                r#"{{"key":"/discovery/abc/{i:016x}","value":"{v}","createdIndex":{}}}"#,
                // Registered in the reverse of the listing's order: the check sorts by index.
                10 - i
            )
        })
        .collect();
    format!(
        r#"{{"action":"get","node":{{"key":"/discovery/abc","dir":true,"nodes":[{{"key":"/discovery/abc/_config","dir":true}},{}]}}}}"#,
        nodes.join(",")
    )
}

fn me(n: u8) -> Vec<String> {
    vec![format!("http://10.77.0.{n}:2380")]
}

#[test]
fn registered_waiting_and_full_as_the_token_answers() {
    let three = dir(&[
        "node3=http://10.77.0.3:2380",
        "node2=http://10.77.0.2:2380",
        "node1=http://10.77.0.1:2380",
    ]);
    let url = canned_routes(vec![
        ("/discovery/abc/_config/size", SIZE_3.to_string()),
        ("/discovery/abc", three),
    ]);
    match check(&url, &me(2), T) {
        Finding::Registered {
            size,
            registered,
            me,
        } => {
            assert_eq!((size, me.as_str()), (3, "node2"));
            let names: Vec<&str> = registered.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(
                names,
                ["node1", "node2", "node3"],
                "in the order they registered"
            );
        }
        other => panic!("{other:?}"),
    }
    let full = check(&url, &me(5), T);
    assert!(matches!(full, Finding::Full { size: 3, .. }), "{full:?}");
    let text = full.message(&url, &me(5));
    assert!(
        text.contains("is full")
            && text.contains("node1 (http://10.77.0.1:2380)")
            && text.contains("(http://10.77.0.5:2380) is not one of them")
            && text.contains("proxy: on"),
        "{text}"
    );

    let url = canned_routes(vec![
        ("/discovery/abc/_config/size", SIZE_3.to_string()),
        ("/discovery/abc", dir(&["node1=http://10.77.0.1:2380"])),
    ]);
    let waiting = check(&url, &me(2), T);
    assert!(
        matches!(&waiting, Finding::Waiting { size: 3, registered } if registered.len() == 1),
        "{waiting:?}"
    );
    let text = waiting.message(&url, &me(2));
    assert!(
        text.contains("1 of the 3 members registered") && text.contains("waits for 2 more"),
        "{text}"
    );
}

#[test]
fn a_url_that_is_no_token_or_cannot_be_reached_is_said_plainly() {
    let url = canned_routes(vec![]);
    let f = check(&url, &me(1), T);
    assert!(matches!(f, Finding::NotAToken(_)), "{f:?}");
    let text = f.message(&url, &me(1));
    assert!(
        text.contains("HTTP 404") && text.contains("kiln-server discovery new"),
        "{text}"
    );
    let url = format!("http://127.0.0.1:{}/discovery/abc", free_port());
    let f = check(&url, &me(1), T);
    assert!(matches!(f, Finding::Unreachable(_)), "{f:?}");
    assert!(f.message(&url, &me(1)).contains("etcd keeps trying"));
}
