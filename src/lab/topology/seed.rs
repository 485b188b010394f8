//! The lab's deterministic choices: MACs and the packets a lossy link drops, derived from the
//! file's `seed` (SplitMix64: a few lines of well-known arithmetic with good mixing, enough for
//! choices that must repeat, not for secrets; no crate needed).

use std::net::IpAddr;

/// A SplitMix64 generator.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        // The modulo bias is below 2^-40 for the sizes used here.
        self.next_u64() % n.max(1)
    }
}

/// A stream of choices for one purpose: the seed mixed with a label (FNV-1a of the label).
pub fn stream(seed: u64, label: &str) -> SplitMix {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    SplitMix::new(seed ^ h)
}

/// The MAC of interface `ifname` of node `node` under `seed`: locally administered, unicast.
pub fn seeded_mac(seed: u64, node: &str, ifname: &str) -> [u8; 6] {
    let v = stream(seed, &format!("mac {node} {ifname}")).next_u64();
    let b = v.to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

/// The fixed MAC of a port with this IPv4 address on a static-ARP switch: 02:6c:A:B:C:D.
pub fn static_mac(ip: IpAddr) -> Option<[u8; 6]> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Some([0x02, 0x6c, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(_) => None,
    }
}

/// Resolution of loss decisions: one packet in ten thousand.
pub const LOSS_SLOTS: u32 = 10_000;

/// Which of every [`LOSS_SLOTS`] consecutive packets a link end drops for `percent` loss: a
/// set drawn from the seed (the same packets on every run), sorted.
pub fn loss_slots(seed: u64, label: &str, percent: f64) -> Vec<u32> {
    let k = ((percent / 100.0) * f64::from(LOSS_SLOTS)).round() as usize;
    let mut all: Vec<u32> = (0..LOSS_SLOTS).collect();
    let mut rng = stream(seed, &format!("loss {label}"));
    // A partial Fisher-Yates shuffle: the first k are a uniform sample.
    for i in 0..k.min(all.len()) {
        let j = i + rng.below((all.len() - i) as u64) as usize;
        all.swap(i, j);
    }
    let mut out: Vec<u32> = all.into_iter().take(k).collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_choices_and_another_seed_others() {
        assert_eq!(seeded_mac(7, "a", "eth0"), seeded_mac(7, "a", "eth0"));
        assert_ne!(seeded_mac(7, "a", "eth0"), seeded_mac(8, "a", "eth0"));
        assert_ne!(seeded_mac(7, "a", "eth0"), seeded_mac(7, "a", "eth1"));
        assert_eq!(seeded_mac(7, "a", "eth0")[0] & 0x03, 0x02);
        let slots = loss_slots(1, "x", 12.5);
        assert_eq!(slots.len(), 1250);
        assert_eq!(slots, loss_slots(1, "x", 12.5));
        assert_ne!(slots, loss_slots(2, "x", 12.5));
    }
}
