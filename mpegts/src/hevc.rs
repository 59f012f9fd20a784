//! HEVC's decoder configuration record (`hvcC`, ISO/IEC 14496-15 §8.3.3.1), as Enhanced
//! RTMP carries it in an `hvc1` sequence start: the NAL length size and the VPS, SPS and
//! PPS a TS receiver needs in front of each IRAP picture. The Annex-B conversion itself is
//! [`crate::avc::to_annexb`] with [`NalSyntax::Hevc`].

use bytes::Bytes;

use super::avc::{AvcConfig, HEVC_PPS, HEVC_SPS, HEVC_VPS, NalSyntax};
use super::error::MuxError;

/// Fixed part of the record before its arrays.
const HEADER: usize = 23;

/// Parses an `hvcC` record (the body of an `hvc1` sequence start after its E-RTMP
/// header).
pub(crate) fn parse_hevc_config(record: &Bytes) -> Result<AvcConfig, MuxError> {
    let d = record.as_ref();
    if d.len() < HEADER {
        return Err(MuxError::MalformedAvcConfig("hvcC shorter than 23 bytes"));
    }
    if d[0] != 1 {
        return Err(MuxError::MalformedAvcConfig(
            "hvcC configurationVersion is not 1",
        ));
    }
    let nal_length_size = (d[21] & 0x03) + 1;
    let arrays = d[22];
    let mut pos = HEADER;
    let (mut vps_sps, mut pps) = (Vec::new(), Vec::new());
    let mut sps_only = Vec::new();
    for _ in 0..arrays {
        let head = d
            .get(pos..pos + 3)
            .ok_or(MuxError::MalformedAvcConfig("hvcC array truncated"))?;
        let nal_type = head[0] & 0x3F;
        let count = u16::from_be_bytes([head[1], head[2]]);
        pos += 3;
        for _ in 0..count {
            let len = d
                .get(pos..pos + 2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                .ok_or(MuxError::MalformedAvcConfig(
                    "hvcC NAL unit length truncated",
                ))?;
            let start = pos + 2;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= d.len() && len > 0)
                .ok_or(MuxError::MalformedAvcConfig(
                    "hvcC NAL unit longer than the record",
                ))?;
            let nal = record.slice(start..end);
            match nal_type {
                HEVC_VPS => vps_sps.push(nal),
                HEVC_SPS => sps_only.push(nal),
                HEVC_PPS => pps.push(nal),
                // SEI and others in the record: not needed in band.
                _ => {}
            }
            pos = end;
        }
    }
    if sps_only.is_empty() || pps.is_empty() {
        return Err(MuxError::MalformedAvcConfig("hvcC without an SPS or a PPS"));
    }
    vps_sps.extend(sps_only);
    Ok(AvcConfig {
        syntax: NalSyntax::Hevc,
        nal_length_size,
        sps: vps_sps,
        pps,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::avc::to_annexb;

    const VPS: &[u8] = &[0x40, 0x01, 0x0c];
    const SPS: &[u8] = &[0x42, 0x01, 0x01];
    const PPS: &[u8] = &[0x44, 0x01, 0xc1];

    fn record() -> Vec<u8> {
        let mut r = vec![1];
        r.extend_from_slice(&[0; 20]);
        r.push(0x0f); // lengthSizeMinusOne = 3
        r.push(3); // arrays
        for (t, nal) in [(HEVC_VPS, VPS), (HEVC_SPS, SPS), (HEVC_PPS, PPS)] {
            r.push(0x80 | t);
            r.extend_from_slice(&1u16.to_be_bytes());
            r.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            r.extend_from_slice(nal);
        }
        r
    }

    fn sample(nals: &[&[u8]]) -> Vec<u8> {
        let mut s = Vec::new();
        for n in nals {
            s.extend_from_slice(&(n.len() as u32).to_be_bytes());
            s.extend_from_slice(n);
        }
        s
    }

    #[test]
    fn irap_pictures_get_vps_sps_pps_and_an_aud() {
        let cfg = parse_hevc_config(&Bytes::from(record())).unwrap();
        assert_eq!(
            (cfg.nal_length_size, cfg.sps.len(), cfg.pps.len()),
            (4, 2, 1)
        );
        // An IDR_W_RADL (type 19) slice.
        let idr: &[u8] = &[19 << 1, 0x01, 0xaa];
        let mut out = Vec::new();
        let au = to_annexb(&cfg, &sample(&[idr]), true, &mut out).unwrap();
        assert!(au.idr);
        let mut want = vec![0, 0, 0, 1, 0x46, 0x01, 0x50];
        for nal in [VPS, SPS, PPS, idr] {
            want.extend_from_slice(&[0, 0, 0, 1]);
            want.extend_from_slice(nal);
        }
        assert_eq!(out, want);
        // A trailing picture (type 1): an AUD, no parameter sets.
        let trail: &[u8] = &[1 << 1, 0x01, 0xbb];
        out.clear();
        let au = to_annexb(&cfg, &sample(&[trail]), false, &mut out).unwrap();
        assert!(!au.idr);
        assert_eq!(out, [0, 0, 0, 1, 0x46, 0x01, 0x50, 0, 0, 0, 1, 2, 1, 0xbb]);
    }

    #[test]
    fn malformed_records_are_errors() {
        let good = record();
        for len in [0, 10, 22, 25, good.len() - 1] {
            assert!(
                parse_hevc_config(&Bytes::copy_from_slice(&good[..len])).is_err(),
                "{len}"
            );
        }
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(parse_hevc_config(&Bytes::from(v2)).is_err());
    }
}
