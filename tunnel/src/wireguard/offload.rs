//! TUN offloads, pure: the virtio-net header the kernel puts before every packet on a TUN
//! device opened with `IFF_VNET_HDR`, checksum completion, and TCP segmentation of the
//! 64 KiB super-packets the kernel hands over once TSO is on (`TUNSETOFFLOAD`).
//!
//! Reading super-packets turns ~45 reads into one; segmenting them here is cheap next to the
//! system calls it saves (the approach of wireguard-go's `tun/offload_linux.go`).

/// Size of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial and must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum need not be verified.
pub const F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;

/// A parsed virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `F_*` flags.
    pub flags: u8,
    /// `GSO_*` type.
    pub gso_type: u8,
    /// Length of the headers to replicate on each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS).
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the header (little-endian fields, as the TUN driver writes them on x86).
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u16le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16le(2),
            gso_size: u16le(4),
            csum_start: u16le(6),
            csum_offset: u16le(8),
        })
    }

    /// A header for a packet whose checksums are complete and trusted (it was authenticated
    /// by WireGuard's AEAD, so the kernel need not verify them again).
    pub const fn trusted() -> [u8; VNET_HDR_LEN] {
        [F_DATA_VALID, GSO_NONE, 0, 0, 0, 0, 0, 0, 0, 0]
    }
}

/// Why a packet from the TUN device could not be turned into wire packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Truncated or inconsistent headers.
    #[error("malformed offload packet")]
    Malformed,
    /// A GSO type this device does not enable.
    #[error("unsupported GSO type {0}")]
    Unsupported(u8),
}

/// Adds `data` to a ones'-complement sum.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IPv4 header checksum of `header` (its checksum field must be zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    fold(sum(0, header))
}

/// The TCP/UDP checksum of `segment` (checksum field zero) over IPv4 with the pseudo-header.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut acc = sum(0, &src);
    acc = sum(acc, &dst);
    acc += u32::from(proto) + segment.len() as u32;
    fold(sum(acc, segment))
}

/// Completes a partial checksum: the field at `csum_start + csum_offset` holds the
/// pseudo-header sum; the checksum over everything from `csum_start` goes there.
pub fn complete_checksum(
    packet: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), OffloadError> {
    let field = csum_start + csum_offset;
    if field + 2 > packet.len() {
        return Err(OffloadError::Malformed);
    }
    let c = fold(sum(0, &packet[csum_start..]));
    packet[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Turns one packet read from the TUN device (after its virtio-net header) into wire
/// packets, calling `emit` with each: as is, with its checksum completed, or segmented.
/// `scratch` must hold at least one segment (MTU bytes).
pub fn segment(
    hdr: &VnetHdr,
    packet: &mut [u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    match hdr.gso_type {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(packet, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            emit(packet);
            Ok(())
        }
        GSO_TCPV4 => segment_tcpv4(packet, hdr.gso_size.into(), scratch, emit),
        other => Err(OffloadError::Unsupported(other)),
    }
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

fn segment_tcpv4(
    packet: &[u8],
    mss: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    let ihl = usize::from(packet.first().ok_or(OffloadError::Malformed)? & 0x0f) * 4;
    if packet.len() < ihl + 20 || ihl < 20 || packet[9] != 6 || mss == 0 {
        return Err(OffloadError::Malformed);
    }
    let thl = usize::from(packet[ihl + 12] >> 4) * 4;
    let hlen = ihl + thl;
    if thl < 20 || packet.len() < hlen || scratch.len() < hlen + mss {
        return Err(OffloadError::Malformed);
    }
    let payload = &packet[hlen..];
    let id = u16::from_be_bytes([packet[4], packet[5]]);
    let seq = u32::from_be_bytes([
        packet[ihl + 4],
        packet[ihl + 5],
        packet[ihl + 6],
        packet[ihl + 7],
    ]);
    let flags = packet[ihl + 13];
    let (src, dst): ([u8; 4], [u8; 4]) = (
        packet[12..16].try_into().expect("4 bytes"),
        packet[16..20].try_into().expect("4 bytes"),
    );
    let count = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload.chunks(mss).enumerate().chain(
        // A header-only packet still goes out once.
        (payload.is_empty()).then_some((0, &payload[..0])),
    ) {
        let len = hlen + chunk.len();
        let seg = &mut scratch[..len];
        seg[..hlen].copy_from_slice(&packet[..hlen]);
        seg[hlen..].copy_from_slice(chunk);
        // IPv4: total length, id, checksum.
        seg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        seg[10..12].fill(0);
        let ip_sum = ipv4_checksum(&seg[..ihl]);
        seg[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        // TCP: sequence number, flags, checksum.
        let tcp = &mut seg[ihl..];
        tcp[4..8].copy_from_slice(&seq.wrapping_add((i * mss) as u32).to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        tcp[13] = f;
        tcp[16..18].fill(0);
        let tcp_sum = l4_checksum(src, dst, 6, tcp);
        tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
        emit(seg);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/TCP packet 10.244.1.1:5000 -> 10.244.2.1:80 with sequence number `seq`,
    /// `payload` and `flags`, and valid checksums (shared by the coalescing tests).
    pub(super) fn tcp(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload.len()];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1000u16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 1]);
        p[16..20].copy_from_slice(&[10, 244, 2, 1]);
        p[20..22].copy_from_slice(&5000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&77u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&500u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        let ip = ipv4_checksum(&p[..20]);
        p[10..12].copy_from_slice(&ip.to_be_bytes());
        let tcp = l4_checksum([10, 244, 1, 1], [10, 244, 2, 1], 6, &p[20..]);
        p[36..38].copy_from_slice(&tcp.to_be_bytes());
        p
    }

    fn tcp_packet(payload: &[u8], flags: u8) -> Vec<u8> {
        tcp(1000, payload, flags)
    }

    fn valid(p: &[u8]) -> bool {
        fold(sum(0, &p[..20])) == 0
            && l4_checksum(
                p[12..16].try_into().unwrap(),
                p[16..20].try_into().unwrap(),
                6,
                &p[20..],
            ) == 0
    }

    #[test]
    fn super_packet_becomes_valid_mss_segments() {
        let payload: Vec<u8> = (0..3500u32).map(|i| i as u8).collect();
        let mut packet = tcp_packet(&payload, TCP_PSH | TCP_FIN | 0x10);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut scratch = vec![0u8; 2000];
        let mut segs = Vec::new();
        segment(&hdr, &mut packet, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 3);
        assert_eq!(
            segs.iter().map(|s| s.len() - 40).collect::<Vec<_>>(),
            [1400, 1400, 700]
        );
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(valid(s), "segment {i} checksums");
            let seq = u32::from_be_bytes(s[24..28].try_into().unwrap());
            assert_eq!(seq, 1000 + 1400 * i as u32);
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1000 + i as u16);
            let last = i == 2;
            assert_eq!(
                s[33] & (TCP_FIN | TCP_PSH) != 0,
                last,
                "FIN/PSH only on the last"
            );
            joined.extend_from_slice(&s[40..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn partial_checksum_is_completed() {
        let mut packet = tcp_packet(b"hello world", 0x18);
        // Replace the checksum by the pseudo-header sum, as the kernel leaves it.
        let pseudo = !fold(sum(sum(sum(0, &[10, 244, 1, 1]), &[10, 244, 2, 1]), &[0, 6]) + 31);
        packet[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let mut out = Vec::new();
        segment(&hdr, &mut packet, &mut [0u8; 64], |p| out = p.to_vec()).unwrap();
        assert!(valid(&out));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let hdr = VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 100,
            ..VnetHdr::default()
        };
        for len in [0usize, 1, 19, 20, 39] {
            let mut p = vec![0x45u8; len];
            assert!(segment(&hdr, &mut p, &mut [0u8; 2000], |_| {}).is_err());
        }
        let bad = VnetHdr {
            gso_type: 3,
            ..VnetHdr::default()
        };
        assert_eq!(
            segment(&bad, &mut [0u8; 60], &mut [0u8; 10], |_| {}),
            Err(OffloadError::Unsupported(3))
        );
        assert!(VnetHdr::parse(&[0; 9]).is_none());
    }
}

/// Coalesces decrypted TCP segments of the same flow into super-packets for the TUN device
/// (GRO in userspace): one write and one trip through the kernel's stack per ~45 segments.
/// Only exact continuations are merged (same addresses, ports, ACK, window, options, flags
/// ACK/PSH only, next sequence number, equal-sized payloads); anything else is written as is.
pub struct Coalescer {
    flows: Vec<Flow>,
    /// Finished super-packets and single packets, each with its virtio-net header.
    out: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

struct Flow {
    /// Virtio-net header room + headers + payloads so far.
    buf: Vec<u8>,
    /// IP + TCP header length.
    hlen: usize,
    ihl: usize,
    /// Payload size of the first segment (the GSO size).
    mss: usize,
    segments: usize,
    next_seq: u32,
    /// A shorter segment ended the flow's super-packet.
    closed: bool,
}

/// Most flows tracked at once per batch.
const MAX_FLOWS: usize = 8;
/// Largest coalesced IP packet.
const MAX_COALESCED: usize = 65_535;

const TCP_ACK: u8 = 0x10;

/// The parts of a TCP/IPv4 packet coalescing looks at, if it is one that may coalesce.
fn tcp_shape(p: &[u8]) -> Option<(usize, usize, u32)> {
    let ihl = usize::from(*p.first()? & 0x0f) * 4;
    if p[0] >> 4 != 4 || ihl != 20 || p.len() < ihl + 20 || p[9] != 6 {
        return None;
    }
    // Fragments never coalesce.
    if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    let thl = usize::from(p[ihl + 12] >> 4) * 4;
    if thl < 20 || p.len() < ihl + thl || usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
        return None;
    }
    let flags = p[ihl + 13];
    if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    let seq = u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]]);
    Some((ihl, ihl + thl, seq))
}

impl Flow {
    fn headers(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.hlen]
    }

    /// Whether `p` (with the given shape) continues this flow.
    fn continues(&self, p: &[u8], hlen: usize, seq: u32) -> bool {
        let h = self.headers();
        let ihl = self.ihl;
        let payload = p.len() - hlen;
        !self.closed
            && hlen == self.hlen
            && seq == self.next_seq
            && payload > 0
            && payload <= self.mss
            && self.buf.len() + payload <= VNET_HDR_LEN + MAX_COALESCED
            // IP: version..TOS, TTL, protocol, addresses.
            && p[..2] == h[..2]
            && p[8..10] == h[8..10]
            && p[12..20] == h[12..20]
            // TCP: ports, ACK number, header length, window, options; PSH may differ.
            && p[ihl..ihl + 4] == h[ihl..ihl + 4]
            && p[ihl + 8..ihl + 13] == h[ihl + 8..ihl + 13]
            && p[ihl + 14..ihl + 16] == h[ihl + 14..ihl + 16]
            && p[ihl + 20..hlen] == h[ihl + 20..hlen]
    }
}

impl Default for Coalescer {
    fn default() -> Self {
        Self {
            flows: Vec::with_capacity(MAX_FLOWS),
            out: Vec::new(),
            spare: Vec::new(),
        }
    }
}

impl Coalescer {
    fn take_buf(&mut self) -> Vec<u8> {
        let mut b = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(VNET_HDR_LEN + MAX_COALESCED));
        b.clear();
        b
    }

    /// Adds one decrypted IP packet.
    pub fn push(&mut self, p: &[u8]) {
        let Some((ihl, hlen, seq)) = tcp_shape(p) else {
            let mut b = self.take_buf();
            b.extend_from_slice(&VnetHdr::trusted());
            b.extend_from_slice(p);
            self.out.push(b);
            return;
        };
        let payload = p.len() - hlen;
        if let Some(i) = self.flows.iter().position(|f| f.continues(p, hlen, seq)) {
            let f = &mut self.flows[i];
            f.buf.extend_from_slice(&p[hlen..]);
            f.segments += 1;
            f.next_seq = seq.wrapping_add(payload as u32);
            // PSH on any segment carries over to the super-packet.
            f.buf[VNET_HDR_LEN + ihl + 13] |= p[ihl + 13] & TCP_PSH;
            if payload < f.mss || p[ihl + 13] & TCP_PSH != 0 {
                f.closed = true;
            }
            return;
        }
        // A new flow: make room, start its super-packet with this segment.
        if self.flows.len() == MAX_FLOWS {
            let oldest = self.flows.remove(0);
            self.finish(oldest);
        }
        let mut buf = self.take_buf();
        buf.extend_from_slice(&[0; VNET_HDR_LEN]);
        buf.extend_from_slice(p);
        self.flows.push(Flow {
            buf,
            hlen,
            ihl,
            mss: payload,
            segments: 1,
            next_seq: seq.wrapping_add(payload as u32),
            closed: payload == 0 || p[ihl + 13] & TCP_PSH != 0,
        });
    }

    fn finish(&mut self, mut f: Flow) {
        if f.segments == 1 {
            f.buf[..VNET_HDR_LEN].copy_from_slice(&VnetHdr::trusted());
            self.out.push(f.buf);
            return;
        }
        let total = f.buf.len() - VNET_HDR_LEN;
        let (ihl, hlen) = (f.ihl, f.hlen);
        let ip = &mut f.buf[VNET_HDR_LEN..];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[10..12].fill(0);
        let ip_sum = ipv4_checksum(&ip[..ihl]);
        ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        // Partial checksum: the pseudo-header sum, completed by whoever needs it.
        let (src, dst): ([u8; 4], [u8; 4]) = (
            ip[12..16].try_into().expect("4 bytes"),
            ip[16..20].try_into().expect("4 bytes"),
        );
        let mut acc = sum(sum(0, &src), &dst);
        acc += 6 + (total - ihl) as u32;
        let pseudo = !fold(acc);
        ip[ihl + 16..ihl + 18].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = [
            [F_NEEDS_CSUM, GSO_TCPV4],
            (hlen as u16).to_le_bytes(),
            (f.mss as u16).to_le_bytes(),
            (ihl as u16).to_le_bytes(),
            16u16.to_le_bytes(),
        ];
        for (i, pair) in hdr.iter().enumerate() {
            f.buf[i * 2..i * 2 + 2].copy_from_slice(pair);
        }
        self.out.push(f.buf);
    }

    /// Ends every open super-packet and hands each finished buffer (virtio-net header
    /// included) to `write`.
    pub fn flush(&mut self, mut write: impl FnMut(&[u8])) {
        for f in std::mem::take(&mut self.flows) {
            self.finish(f);
        }
        for b in self.out.drain(..) {
            write(&b);
            self.spare.push(b);
        }
        self.spare.truncate(MAX_FLOWS * 2);
    }
}

#[cfg(test)]
mod coalesce_tests {
    use super::*;

    fn seg(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        super::tests::tcp(seq, payload, flags)
    }

    #[test]
    fn consecutive_segments_merge_and_resegment_to_the_original() {
        let mut c = Coalescer::default();
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        c.push(&seg(100, &data[..1000], TCP_ACK));
        c.push(&seg(1100, &data[1000..2000], TCP_ACK));
        c.push(&seg(2100, &data[2000..2500], TCP_ACK | TCP_PSH));
        c.push(&seg(5000, b"later", TCP_ACK)); // not a continuation: its own packet
        let mut writes = Vec::new();
        c.flush(|b| writes.push(b.to_vec()));
        assert_eq!(writes.len(), 2);
        let hdr = VnetHdr::parse(&writes[0]).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.hdr_len),
            (GSO_TCPV4, 1000, 40)
        );
        // The kernel would segment it back; our own segmenter must give the originals.
        let mut big = writes[0][VNET_HDR_LEN..].to_vec();
        let mut segs = Vec::new();
        segment(&hdr, &mut big, &mut vec![0u8; 2000], |s| {
            segs.push(s.to_vec())
        })
        .unwrap();
        assert_eq!(segs.len(), 3);
        let joined: Vec<u8> = segs.iter().flat_map(|s| s[40..].to_vec()).collect();
        assert_eq!(joined, &data[..2500]);
        assert_eq!(
            u32::from_be_bytes(segs[2][24..28].try_into().unwrap()),
            2100
        );
        assert_eq!(VnetHdr::parse(&writes[1]).unwrap().gso_type, GSO_NONE);
    }

    #[test]
    fn gaps_syn_and_other_protocols_pass_through() {
        let mut c = Coalescer::default();
        c.push(&seg(1, &[1; 100], TCP_ACK));
        c.push(&seg(500, &[2; 100], TCP_ACK)); // gap
        c.push(&seg(600, &[3; 100], 0x02)); // SYN
        let mut udp = seg(0, &[4; 10], 0);
        udp[9] = 17;
        c.push(&udp);
        c.push(&[0x45]); // garbage
        let mut n = 0;
        c.flush(|b| {
            assert_eq!(VnetHdr::parse(b).unwrap().gso_type, GSO_NONE);
            n += 1;
        });
        assert_eq!(n, 5);
    }
}
