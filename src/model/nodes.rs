//! The node file of `netbox node routes`: which node (by address) holds which pod CIDRs. One
//! node per line, `NODE_ADDRESS POD_CIDR [POD_CIDR ...]`; `#` starts a comment, blank lines are
//! ignored. A controller writes it from the cluster's Node objects (an InternalIP and
//! `spec.podCIDRs`); a dual-stack node may take one line per address family.
//!
//! The whole file is checked before anything is changed: addresses and CIDRs parse, a CIDR has
//! no host bits and is not a default route, no node appears twice and no two CIDRs overlap.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use thiserror::Error;

/// Why a node file is refused (the line, 1-based, and what is wrong with it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NodesError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("pod CIDRs {a} (node {a_node}) and {b} (node {b_node}) overlap")]
    Overlap {
        a: IpNetwork,
        a_node: IpAddr,
        b: IpNetwork,
        b_node: IpAddr,
    },
}

/// One node: its address and the pod CIDRs routed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub address: IpAddr,
    pub pod_cidrs: Vec<IpNetwork>,
}

/// A parsed, checked node file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

impl NodeList {
    /// Parses and checks the text of a node file.
    pub fn parse(text: &str) -> Result<NodeList, NodesError> {
        let mut nodes: Vec<Node> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let bad = |reason: String| NodesError::Line { line, reason };
            let content = raw.split('#').next().unwrap_or("").trim();
            let mut words = content.split_whitespace();
            let Some(first) = words.next() else {
                continue;
            };
            let address: IpAddr = first
                .parse()
                .map_err(|_| bad(format!("{first:?} is not a node address")))?;
            if nodes.iter().any(|n| n.address == address) {
                return Err(bad(format!("node {address} is listed twice")));
            }
            let mut pod_cidrs = Vec::new();
            for word in words {
                pod_cidrs.push(parse_cidr(word).map_err(bad)?);
            }
            if pod_cidrs.is_empty() {
                return Err(bad(format!("node {address} has no pod CIDR")));
            }
            nodes.push(Node { address, pod_cidrs });
        }
        let list = NodeList { nodes };
        list.check_overlaps()?;
        Ok(list)
    }

    fn check_overlaps(&self) -> Result<(), NodesError> {
        let all: Vec<(IpAddr, IpNetwork)> = self
            .nodes
            .iter()
            .flat_map(|n| n.pod_cidrs.iter().map(move |c| (n.address, *c)))
            .collect();
        for (i, (a_node, a)) in all.iter().enumerate() {
            for (b_node, b) in &all[i + 1..] {
                if a.is_ipv4() == b.is_ipv4()
                    && (a.contains(b.network()) || b.contains(a.network()))
                {
                    return Err(NodesError::Overlap {
                        a: *a,
                        a_node: *a_node,
                        b: *b,
                        b_node: *b_node,
                    });
                }
            }
        }
        Ok(())
    }
}

fn parse_cidr(word: &str) -> Result<IpNetwork, String> {
    let cidr: IpNetwork = word
        .parse()
        .map_err(|e| format!("{word:?} is not a CIDR: {e}"))?;
    if !word.contains('/') {
        return Err(format!("{word:?} is not a CIDR (no /prefix)"));
    }
    if cidr.prefix() == 0 {
        return Err(format!(
            "{word}: a pod CIDR cannot cover every address (it would replace the default route)"
        ));
    }
    if cidr.ip() != cidr.network() {
        return Err(format!(
            "{word}: host bits are set (did you mean {}/{}?)",
            cidr.network(),
            cidr.prefix()
        ));
    }
    Ok(cidr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_dual_stack_are_read() {
        let list = NodeList::parse(
            "# node  pod CIDRs\n10.0.0.1 10.244.0.0/24\n\n10.0.0.2 10.244.1.0/24 fd00:1::/64 # b\n",
        )
        .expect("valid");
        assert_eq!(list.nodes.len(), 2);
        assert_eq!(list.nodes[1].pod_cidrs.len(), 2);
        assert_eq!(NodeList::parse("").expect("empty"), NodeList::default());
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for (text, want) in [
            (
                "10.0.0.1 10.244.0.0/24\nnode2 10.244.1.0/24",
                "line 2: \"node2\" is not a node address",
            ),
            (
                "10.0.0.1 10.244.0.5/24",
                "line 1: 10.244.0.5/24: host bits are set (did you mean 10.244.0.0/24?)",
            ),
            (
                "10.0.0.1 10.244.0.0/33",
                "line 1: \"10.244.0.0/33\" is not a CIDR",
            ),
            (
                "10.0.0.1 10.244.0.0",
                "line 1: \"10.244.0.0\" is not a CIDR (no /prefix)",
            ),
            ("10.0.0.1 0.0.0.0/0", "cannot cover every address"),
            ("10.0.0.1", "line 1: node 10.0.0.1 has no pod CIDR"),
            (
                "10.0.0.1 10.244.0.0/24\n10.0.0.1 10.244.1.0/24",
                "line 2: node 10.0.0.1 is listed twice",
            ),
            ("10.0.0.1 10.244.0.0/16\n10.0.0.2 10.244.1.0/24", "overlap"),
        ] {
            let err = NodeList::parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
