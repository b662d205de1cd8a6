//! `etcd://HOST:PORT[,HOST:PORT…]`: where the cluster's etcd members listen.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdUrl {
    members: Vec<String>,
}

impl EtcdUrl {
    /// gRPC endpoints for the etcd client.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://{m}")).collect()
    }
}

impl std::str::FromStr for EtcdUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("{s:?}: expected etcd://HOST:PORT[,HOST:PORT…]"))?;
        let members: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        if members.is_empty() {
            return Err(format!("{s:?}: no etcd member given"));
        }
        for m in &members {
            let (host, port) = m
                .rsplit_once(':')
                .ok_or_else(|| format!("{m:?}: expected HOST:PORT"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!("{m:?}: expected HOST:PORT"));
            }
        }
        Ok(Self { members })
    }
}

impl fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd://{}", self.members.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::EtcdUrl;

    #[test]
    fn parses_members_and_rejects_what_is_not_an_etcd_url() {
        let u: EtcdUrl = "etcd://127.0.0.1:2379,10.0.0.2:2379".parse().unwrap();
        assert_eq!(
            u.endpoints(),
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        for bad in [
            "127.0.0.1:2379",
            "etcd://",
            "etcd://host",
            "etcd://h:99999",
            "redb://x",
        ] {
            assert!(bad.parse::<EtcdUrl>().is_err(), "{bad}");
        }
    }
}
