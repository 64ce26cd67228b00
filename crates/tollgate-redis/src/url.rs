//! Store URLs: `redis://host:port/db`, `rediss://…` (TLS) and
//! `redis+cluster://host1:port1,host2:port2` (`rediss+cluster://` with TLS).

use crate::error::RedisError;

/// Where the store connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One Redis server (or a proxy that looks like one): the URL as redis-rs reads it.
    Single(String),
    /// A Redis Cluster: one URL per seed node.
    Cluster(Vec<String>),
}

/// Reads a store URL; the error names what is wrong.
pub(crate) fn parse(url: &str) -> Result<Target, RedisError> {
    let bad = |why: &str| RedisError::Config(format!("store url {url:?}: {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        bad("expected redis://host:port/db, rediss://… or redis+cluster://h1:p1,h2:p2")
    })?;
    match scheme {
        "redis" | "rediss" => {
            if rest.is_empty() {
                return Err(bad("no host"));
            }
            Ok(Target::Single(url.to_owned()))
        }
        "redis+cluster" | "rediss+cluster" => {
            let node_scheme = if scheme == "rediss+cluster" {
                "rediss"
            } else {
                "redis"
            };
            // Credentials, if any, apply to every node: `redis+cluster://user:pw@h1:p1,h2:p2`.
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((auth, hosts)) => (format!("{auth}@"), hosts),
                None => (String::new(), rest),
            };
            let hosts = hosts.trim_end_matches('/');
            let nodes: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .map(|h| {
                    if h.is_empty() {
                        Err(bad("an empty node in the list"))
                    } else if h.contains('/') {
                        Err(bad("a cluster has no database number: remove the /db part"))
                    } else {
                        Ok(format!("{node_scheme}://{auth}{h}"))
                    }
                })
                .collect::<Result<_, _>>()?;
            Ok(Target::Cluster(nodes))
        }
        other => Err(bad(&format!(
            "unknown scheme {other:?}: expected redis, rediss, redis+cluster or rediss+cluster"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_urls_pass_through() {
        assert_eq!(
            parse("redis://127.0.0.1:6379/2").ok(),
            Some(Target::Single("redis://127.0.0.1:6379/2".into()))
        );
        assert_eq!(
            parse("rediss://:pw@example:6380").ok(),
            Some(Target::Single("rediss://:pw@example:6380".into()))
        );
    }

    #[test]
    fn cluster_urls_split_into_nodes() {
        assert_eq!(
            parse("redis+cluster://a:1, b:2,c:3/").ok(),
            Some(Target::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into(),
                "redis://c:3".into()
            ]))
        );
        assert_eq!(
            parse("rediss+cluster://u:p@a:1,b:2").ok(),
            Some(Target::Cluster(vec![
                "rediss://u:p@a:1".into(),
                "rediss://u:p@b:2".into()
            ]))
        );
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("localhost:6379", "expected redis://"),
            ("http://x", "unknown scheme \"http\""),
            ("redis://", "no host"),
            ("redis+cluster://a:1,,b:2", "empty node"),
            ("redis+cluster://a:1/0", "no database"),
        ] {
            match parse(url) {
                Err(e) => assert!(e.to_string().contains(why), "{url}: {e}"),
                Ok(t) => panic!("{url} parsed as {t:?}"),
            }
        }
    }
}
