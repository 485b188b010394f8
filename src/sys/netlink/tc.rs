//! Queueing disciplines for lab links: tbf (rate limits) and netem (delay, loss).
//!
//! netlink-packet-route 0.34 has no tbf or netem option types, so the TCA_OPTIONS payloads are
//! built here from the kernel's UAPI layouts (linux/pkt_sched.h).

use futures::StreamExt;
use netlink_packet_core::{DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE};
use netlink_packet_core::{NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Link, NetlinkError, Result};

const TCA_OPTIONS: u16 = 2;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// NLA_F_NESTED is not needed by the kernel for TCA_OPTIONS; plain attributes it is.
const NLA_HDRLEN: usize = 4;

/// A token bucket: `rate` bytes per second, bursts of `burst` bytes, `limit` bytes queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbfSpec {
    pub rate_bytes: u64,
    pub burst_bytes: u32,
    pub limit_bytes: u32,
}

impl TbfSpec {
    /// Sensible burst and queue for a rate: 10 ms worth of data, at least 32 KiB of burst
    /// (segmentation offload sends 64 KiB at once on veth, smaller buckets stall it).
    pub fn for_rate(rate_bytes: u64) -> TbfSpec {
        let per_10ms = u32::try_from(rate_bytes / 100).unwrap_or(u32::MAX);
        let burst = per_10ms.max(64 * 1024);
        TbfSpec {
            rate_bytes,
            burst_bytes: burst,
            limit_bytes: burst.saturating_mul(2).max(128 * 1024),
        }
    }
}

/// netem's delay, jitter, reordering and loss.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NetemSpec {
    pub delay_ns: u64,
    pub loss_percent: f64,
    pub jitter_ns: u64,
    /// Sent at once (out of order) instead of delayed.
    pub reorder_percent: f64,
}

fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = NLA_HDRLEN + value.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(len.next_multiple_of(4), 0);
    out
}

/// struct tc_ratespec { u8 cell_log, linklayer; u16 overhead; s16 cell_align; u16 mpu; u32 rate }
fn ratespec(rate_bytes: u64) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[1] = TC_LINKLAYER_ETHERNET;
    let rate32 = u32::try_from(rate_bytes).unwrap_or(u32::MAX);
    r[8..12].copy_from_slice(&rate32.to_ne_bytes());
    r
}

/// TCA_OPTIONS of tbf: struct tc_tbf_qopt { rate, peakrate: tc_ratespec; u32 limit, buffer, mtu }
/// plus the 64-bit rate and the burst in bytes (so no rate table is needed).
pub(super) fn tbf_options(spec: &TbfSpec) -> Vec<u8> {
    let mut qopt = Vec::with_capacity(36);
    qopt.extend_from_slice(&ratespec(spec.rate_bytes));
    qopt.extend_from_slice(&[0u8; 12]);
    qopt.extend_from_slice(&spec.limit_bytes.to_ne_bytes());
    qopt.extend_from_slice(&0u32.to_ne_bytes());
    qopt.extend_from_slice(&0u32.to_ne_bytes());
    let mut out = nla(TCA_TBF_PARMS, &qopt);
    out.extend(nla(TCA_TBF_RATE64, &spec.rate_bytes.to_ne_bytes()));
    out.extend(nla(TCA_TBF_BURST, &spec.burst_bytes.to_ne_bytes()));
    out
}

/// TCA_OPTIONS of netem: struct tc_netem_qopt { u32 latency, limit, loss, gap, duplicate,
/// jitter } followed by attributes (the 64-bit latency in ns).
pub(super) fn netem_options(spec: &NetemSpec) -> Vec<u8> {
    let probability = |p: f64| (p.clamp(0.0, 100.0) / 100.0 * f64::from(u32::MAX)) as u32;
    let loss = probability(spec.loss_percent);
    // tc's rule: reordering without a gap reorders with gap 1.
    let gap = u32::from(spec.reorder_percent > 0.0);
    let mut out = Vec::with_capacity(64);
    for v in [0u32, 1000, loss, gap, 0, 0] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    if spec.reorder_percent > 0.0 {
        // struct tc_netem_reorder { u32 probability, correlation }
        let mut reorder = probability(spec.reorder_percent).to_ne_bytes().to_vec();
        reorder.extend_from_slice(&0u32.to_ne_bytes());
        out.extend(nla(TCA_NETEM_REORDER, &reorder));
    }
    if spec.jitter_ns > 0 {
        out.extend(nla(
            TCA_NETEM_JITTER64,
            &i64::try_from(spec.jitter_ns)
                .unwrap_or(i64::MAX)
                .to_ne_bytes(),
        ));
    }
    out.extend(nla(
        TCA_NETEM_LATENCY64,
        &i64::try_from(spec.delay_ns)
            .unwrap_or(i64::MAX)
            .to_ne_bytes(),
    ));
    out
}

impl super::Netlink {
    /// Makes a tbf the root qdisc of `link`: its egress is limited to the spec's rate.
    pub async fn add_tbf(&self, link: &Link, spec: &TbfSpec) -> Result<()> {
        self.add_root_qdisc(link, "tbf", tbf_options(spec), "sch_tbf")
            .await
    }

    /// Makes a netem the root qdisc of `link` (delay, loss). Kernels without sch_netem get a
    /// clear refusal rather than a bare ENOENT.
    pub async fn add_netem(&self, link: &Link, spec: &NetemSpec) -> Result<()> {
        self.add_root_qdisc(
            link,
            "netem",
            netem_options(spec),
            "sch_netem: delay and loss emulation are unavailable on this kernel",
        )
        .await
    }

    /// Removes the root qdisc of `link` (back to the default); nothing to remove is fine.
    pub async fn delete_root_qdisc(&self, link: &Link) -> Result<()> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = TcHandle::ROOT;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelQueueDiscipline(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let what = format!("removing the root qdisc of \"{}\"", link.name);
        let mut handle = self.handle.clone();
        let mut response = handle
            .request(req)
            .map_err(|e| super::request_error(what.clone(), e))?;
        while let Some(message) = response.next().await {
            if let NetlinkPayload::Error(err) = message.payload {
                let code = err.raw_code().abs();
                // No qdisc of ours there (the default one cannot be deleted).
                if code == libc::ENOENT || code == libc::EINVAL {
                    continue;
                }
                return Err(super::request_error(
                    what,
                    rtnetlink::Error::NetlinkError(err),
                ));
            }
        }
        Ok(())
    }

    async fn add_root_qdisc(
        &self,
        link: &Link,
        kind: &'static str,
        options: Vec<u8>,
        hint: &'static str,
    ) -> Result<()> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = TcHandle::ROOT;
        msg.header.handle = TcHandle { major: 1, minor: 0 };
        msg.attributes.push(TcAttribute::Kind(kind.to_string()));
        msg.attributes
            .push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, options)));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let what = format!("adding a {kind} qdisc on \"{}\"", link.name);
        let mut handle = self.handle.clone();
        let mut response = handle
            .request(req)
            .map_err(|e| super::request_error(what.clone(), e))?;
        while let Some(message) = response.next().await {
            if let NetlinkPayload::Error(err) = message.payload {
                let code = err.raw_code().abs();
                if code == libc::ENOENT || code == libc::EOPNOTSUPP {
                    return Err(NetlinkError::QdiscUnsupported { kind, hint });
                }
                return Err(super::request_error(
                    what,
                    rtnetlink::Error::NetlinkError(err),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_options_carry_rate_and_burst_as_aligned_attributes() {
        let spec = TbfSpec::for_rate(2_500_000);
        let bytes = tbf_options(&spec);
        // PARMS (4 + 36) + RATE64 (4 + 8) + BURST (4 + 4)
        assert_eq!(bytes.len(), 40 + 12 + 8);
        assert_eq!(u16::from_ne_bytes([bytes[0], bytes[1]]), 40);
        assert_eq!(bytes[4 + 1], TC_LINKLAYER_ETHERNET);
        assert_eq!(&bytes[4 + 8..4 + 12], &2_500_000u32.to_ne_bytes());
    }
}
