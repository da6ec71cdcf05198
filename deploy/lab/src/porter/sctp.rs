//! Just enough SCTP (RFC 9260) to open and answer an association's first exchange over raw
//! sockets, for kernels without an SCTP module: INIT, INIT-ACK and ABORT packets, their
//! CRC32c checksum (RFC 9260 appendix A), and reading them back out of received IPv4 packets.
//!
//! Linux conntrack tracks these exactly like a kernel association's: it checks the checksum,
//! that an INIT carries verification tag 0, and that replies carry the INIT's initiate tag.

/// IP protocol number of SCTP.
pub const PROTOCOL: i32 = 132;

/// Chunk type INIT.
pub const INIT: u8 = 1;
/// Chunk type INIT ACK.
pub const INIT_ACK: u8 = 2;
/// Chunk type ABORT.
pub const ABORT: u8 = 6;

/// The receive window, stream counts and cookie advertised (any sane values do).
const A_RWND: u32 = 65_535;
const STREAMS: u16 = 10;
const STATE_COOKIE: u16 = 7;

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78), as SCTP uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    static TABLE: [u32; 256] = table();
    !data.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// One SCTP packet with a single chunk, as far as this module cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The common header's verification tag.
    pub vtag: u32,
    /// The first chunk's type.
    pub chunk: u8,
    /// The first chunk's flags.
    pub flags: u8,
    /// For INIT and INIT ACK: the initiate tag.
    pub initiate_tag: u32,
}

impl Packet {
    /// An INIT from `src_port` to `dst_port` announcing `initiate_tag` (non-zero).
    pub fn init(src_port: u16, dst_port: u16, initiate_tag: u32) -> Self {
        Packet {
            src_port,
            dst_port,
            vtag: 0,
            chunk: INIT,
            flags: 0,
            initiate_tag,
        }
    }

    /// The INIT ACK answering `init`, announcing our own `initiate_tag`.
    pub fn init_ack(init: &Packet, initiate_tag: u32) -> Self {
        Packet {
            src_port: init.dst_port,
            dst_port: init.src_port,
            vtag: init.initiate_tag,
            chunk: INIT_ACK,
            flags: 0,
            initiate_tag,
        }
    }

    /// The ABORT refusing `init` (nothing listens on its port), tagged with its initiate tag
    /// as Linux does.
    pub fn abort(init: &Packet) -> Self {
        Packet {
            src_port: init.dst_port,
            dst_port: init.src_port,
            vtag: init.initiate_tag,
            chunk: ABORT,
            flags: 0,
            initiate_tag: 0,
        }
    }

    /// The packet's bytes (SCTP common header and chunk, no IP header), checksummed.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(48);
        p.extend_from_slice(&self.src_port.to_be_bytes());
        p.extend_from_slice(&self.dst_port.to_be_bytes());
        p.extend_from_slice(&self.vtag.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        let mut chunk = Vec::with_capacity(36);
        chunk.push(self.chunk);
        chunk.push(self.flags);
        chunk.extend_from_slice(&[0, 0]);
        if matches!(self.chunk, INIT | INIT_ACK) {
            chunk.extend_from_slice(&self.initiate_tag.to_be_bytes());
            chunk.extend_from_slice(&A_RWND.to_be_bytes());
            chunk.extend_from_slice(&STREAMS.to_be_bytes());
            chunk.extend_from_slice(&STREAMS.to_be_bytes());
            // Initial TSN: any value; the initiate tag is as good as any.
            chunk.extend_from_slice(&self.initiate_tag.to_be_bytes());
        }
        if self.chunk == INIT_ACK {
            // The mandatory State Cookie: our tag and the peer's, 8 bytes.
            chunk.extend_from_slice(&STATE_COOKIE.to_be_bytes());
            chunk.extend_from_slice(&12u16.to_be_bytes());
            chunk.extend_from_slice(&self.initiate_tag.to_be_bytes());
            chunk.extend_from_slice(&self.vtag.to_be_bytes());
        }
        let len = chunk.len() as u16;
        chunk[2..4].copy_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&chunk);
        let sum = crc32c(&p);
        // The CRC is carried least significant byte first (RFC 9260 appendix A).
        p[8..12].copy_from_slice(&sum.to_le_bytes());
        p
    }

    /// Reads an SCTP packet (no IP header) with a valid checksum; `None` otherwise.
    pub fn decode(p: &[u8]) -> Option<Self> {
        if p.len() < 16 {
            return None;
        }
        let mut zeroed = p.to_vec();
        zeroed[8..12].fill(0);
        if crc32c(&zeroed).to_le_bytes() != p[8..12] {
            return None;
        }
        let u16_at = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
        let u32_at = |i: usize| {
            p.get(i..i + 4)
                .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
        };
        let chunk = p[12];
        let initiate_tag = if matches!(chunk, INIT | INIT_ACK) {
            u32_at(16)?
        } else {
            0
        };
        Some(Packet {
            src_port: u16_at(0),
            dst_port: u16_at(2),
            vtag: u32_at(4)?,
            chunk,
            flags: p[13],
            initiate_tag,
        })
    }

    /// Reads an SCTP packet out of an IPv4 packet as a raw socket receives it; also returns
    /// the IPv4 source address.
    pub fn from_ipv4(ip: &[u8]) -> Option<(std::net::Ipv4Addr, Self)> {
        if ip.len() < 20 || ip[0] >> 4 != 4 || i32::from(ip[9]) != PROTOCOL {
            return None;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        Some((src, Packet::decode(ip.get(ihl..)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_vectors() {
        // RFC 3720 appendix B.4.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn init_init_ack_and_abort_round_trip_with_the_right_tags() {
        let init = Packet::init(40_000, 80, 0xdead_beef);
        let bytes = init.encode();
        assert_eq!(bytes.len(), 32, "12-byte header + 20-byte INIT");
        assert_eq!(&bytes[4..8], &[0; 4], "an INIT carries verification tag 0");
        let back = Packet::decode(&bytes).unwrap();
        assert_eq!(back, init);

        let ack = Packet::init_ack(&back, 0x1234_5678);
        assert_eq!((ack.src_port, ack.dst_port), (80, 40_000));
        assert_eq!(ack.vtag, 0xdead_beef, "tagged with the INIT's initiate tag");
        let ack_bytes = ack.encode();
        assert_eq!(ack_bytes.len(), 12 + 20 + 12);
        assert_eq!(Packet::decode(&ack_bytes).unwrap(), ack);

        let abort = Packet::abort(&back);
        assert_eq!(abort.vtag, 0xdead_beef);
        assert_eq!(Packet::decode(&abort.encode()).unwrap(), abort);
    }

    #[test]
    fn corrupt_or_short_packets_are_refused() {
        let mut bytes = Packet::init(1, 2, 3).encode();
        bytes[20] ^= 1;
        assert_eq!(Packet::decode(&bytes), None);
        assert_eq!(Packet::decode(&bytes[..10]), None);
    }

    #[test]
    fn reads_sctp_out_of_an_ipv4_packet() {
        let sctp = Packet::init(5, 81, 9).encode();
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 132, 0, 0, 10, 244, 1, 10, 10, 244, 2, 20,
        ];
        ip.extend_from_slice(&sctp);
        let (src, p) = Packet::from_ipv4(&ip).unwrap();
        assert_eq!(src, std::net::Ipv4Addr::new(10, 244, 1, 10));
        assert_eq!(p.dst_port, 81);
        ip[9] = 6;
        assert_eq!(Packet::from_ipv4(&ip), None);
    }
}
