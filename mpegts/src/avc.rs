//! H.264 and HEVC from FLV framing (a decoder configuration record + length-prefixed NAL
//! units) to the Annex-B byte stream MPEG-TS carries (ISO/IEC 14496-15 §5.3.3 and §8.3.3,
//! H.222.0 §2.14 and §2.17).
//!
//! In FLV the parameter sets (H.264 SPS/PPS, HEVC VPS/SPS/PPS) travel once, out of band,
//! in the sequence header; a TS receiver may join at any keyframe, so every random access
//! unit gets them in band. Every access unit starts with an access unit delimiter, as
//! H.222.0 requires in TS. The two codecs differ only in their NAL unit header
//! ([`NalSyntax`]); the HEVC record is read by [`crate::hevc`].

use bytes::Bytes;

use super::error::MuxError;

/// NAL unit types we look at (H.264 Table 7-1).
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// HEVC NAL unit types (H.265 Table 7-1): IRAP pictures, parameter sets, AUD.
const HEVC_IRAP: std::ops::RangeInclusive<u8> = 16..=23;
pub(crate) const HEVC_VPS: u8 = 32;
pub(crate) const HEVC_SPS: u8 = 33;
pub(crate) const HEVC_PPS: u8 = 34;
const HEVC_AUD: u8 = 35;

const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// AUD with primary_pic_type 7 ("any slice type"): correct for every access unit, so we
/// need not parse slice headers to pick a tighter value.
const AUD: [u8; 6] = [0, 0, 0, 1, NAL_AUD, 0xF0];
/// HEVC AUD (type 35, layer 0, temporal id 1) with pic_type 2 (I, P and B slices).
const HEVC_AUD_BYTES: [u8; 7] = [0, 0, 0, 1, HEVC_AUD << 1, 0x01, 0x50];

/// Which NAL unit header the stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NalSyntax {
    H264,
    Hevc,
}

impl NalSyntax {
    /// The NAL unit type from its first header byte.
    fn nal_type(self, header: u8) -> u8 {
        match self {
            NalSyntax::H264 => header & 0x1F,
            NalSyntax::Hevc => (header >> 1) & 0x3F,
        }
    }

    fn is_random_access(self, t: u8) -> bool {
        match self {
            NalSyntax::H264 => t == NAL_IDR,
            NalSyntax::Hevc => HEVC_IRAP.contains(&t),
        }
    }

    fn is_aud(self, t: u8) -> bool {
        match self {
            NalSyntax::H264 => t == NAL_AUD,
            NalSyntax::Hevc => t == HEVC_AUD,
        }
    }

    /// The parameter set types a random access unit needs, as a bit set.
    fn required_parameter_sets(self) -> u64 {
        match self {
            NalSyntax::H264 => (1 << NAL_SPS) | (1 << NAL_PPS),
            NalSyntax::Hevc => (1 << HEVC_VPS) | (1 << HEVC_SPS) | (1 << HEVC_PPS),
        }
    }

    fn aud(self) -> &'static [u8] {
        match self {
            NalSyntax::H264 => &AUD,
            NalSyntax::Hevc => &HEVC_AUD_BYTES,
        }
    }
}

/// The parts of a decoder configuration record (H.264 `avcC`, HEVC `hvcC`) the muxer
/// needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AvcConfig {
    pub syntax: NalSyntax,
    /// Size in bytes of each NAL unit's length prefix in the frames (1..=4).
    pub nal_length_size: u8,
    /// H.264: the SPS; HEVC: the VPS and SPS.
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

/// Parses an AVCDecoderConfigurationRecord (the body of an AVC sequence header tag after
/// the 5-byte FLV video header).
pub(crate) fn parse_avc_config(record: &Bytes) -> Result<AvcConfig, MuxError> {
    let d = record.as_ref();
    if d.len() < 7 {
        return Err(MuxError::MalformedAvcConfig("shorter than 7 bytes"));
    }
    if d[0] != 1 {
        return Err(MuxError::MalformedAvcConfig(
            "configurationVersion is not 1",
        ));
    }
    // lengthSizeMinusOne: the spec allows 0, 1 and 3; 2 (3-byte lengths) is read the
    // same way, so we accept it rather than fail a stream a decoder would play.
    let nal_length_size = (d[4] & 0x03) + 1;
    let num_sps = d[5] & 0x1F;
    let mut pos = 6;
    let mut sps = Vec::with_capacity(usize::from(num_sps));
    for _ in 0..num_sps {
        sps.push(parameter_set(record, &mut pos)?);
    }
    let num_pps = *d.get(pos).ok_or(MuxError::MalformedAvcConfig(
        "truncated before the PPS count",
    ))?;
    pos += 1;
    let mut pps = Vec::with_capacity(usize::from(num_pps));
    for _ in 0..num_pps {
        pps.push(parameter_set(record, &mut pos)?);
    }
    // Anything after the PPS (High profile chroma/bit depth extension) is not needed:
    // the SPS carries the same information for the decoder.
    Ok(AvcConfig {
        syntax: NalSyntax::H264,
        nal_length_size,
        sps,
        pps,
    })
}

/// One 16-bit-length-prefixed parameter set at `*pos`, as a refcounted slice of `record`.
fn parameter_set(record: &Bytes, pos: &mut usize) -> Result<Bytes, MuxError> {
    let d = record.as_ref();
    let len_bytes =
        d.get(*pos..)
            .and_then(|rest| rest.get(..2))
            .ok_or(MuxError::MalformedAvcConfig(
                "truncated parameter set length",
            ))?;
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    let start = *pos + 2;
    let end = start.checked_add(len).filter(|&end| end <= d.len()).ok_or(
        MuxError::MalformedAvcConfig("parameter set longer than the record"),
    )?;
    if len == 0 {
        return Err(MuxError::MalformedAvcConfig("empty parameter set"));
    }
    *pos = end;
    Ok(record.slice(start..end))
}

/// Iterates the NAL units of a length-prefixed AVC sample; an error ends the iteration.
pub(crate) struct NalUnits<'a> {
    data: &'a [u8],
    length_size: usize,
}

impl<'a> NalUnits<'a> {
    pub(crate) fn new(data: &'a [u8], length_size: u8) -> Self {
        NalUnits {
            data,
            length_size: usize::from(length_size),
        }
    }
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = Result<&'a [u8], MuxError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let Some((prefix, rest)) = self.data.split_at_checked(self.length_size) else {
            self.data = &[];
            return Some(Err(MuxError::MalformedVideoFrame(
                "truncated NAL unit length prefix",
            )));
        };
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let Some((nal, rest)) = rest.split_at_checked(len) else {
            self.data = &[];
            return Some(Err(MuxError::MalformedVideoFrame(
                "NAL unit length exceeds the frame",
            )));
        };
        self.data = rest;
        Some(Ok(nal))
    }
}

/// What [`to_annexb`] found in the access unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccessUnit {
    /// The access unit holds an IDR slice (a clean random access point).
    pub idr: bool,
    /// Number of NAL units copied from the input (0: nothing to decode, skip the frame).
    pub nal_units: usize,
}

/// Appends the access unit in `sample` (length-prefixed NAL units) to `out` as Annex-B:
/// an AUD first, then, if the unit is a keyframe and lacks them, the SPS/PPS from
/// `config`, then the NAL units with 4-byte start codes. AUDs in the input are dropped
/// (ours replaces them). On error `out` may hold a partial unit: the caller discards it.
pub(crate) fn to_annexb(
    config: &AvcConfig,
    sample: &[u8],
    keyframe: bool,
    out: &mut Vec<u8>,
) -> Result<AccessUnit, MuxError> {
    // First pass: validate every length before writing anything, and learn what the
    // unit contains (an IDR, in-band parameter sets).
    let syntax = config.syntax;
    let (mut idr, mut in_band, mut count) = (false, 0u64, 0usize);
    for nal in NalUnits::new(sample, config.nal_length_size) {
        let nal = nal?;
        let Some(t) = nal.first().map(|h| syntax.nal_type(*h)) else {
            continue;
        };
        if syntax.is_aud(t) {
            continue;
        }
        if syntax.is_random_access(t) {
            idr = true;
        }
        in_band |= 1u64.checked_shl(u32::from(t)).unwrap_or(0);
        count += 1;
    }
    if count == 0 {
        return Ok(AccessUnit {
            idr: false,
            nal_units: 0,
        });
    }
    out.extend_from_slice(syntax.aud());
    let required = syntax.required_parameter_sets();
    if (keyframe || idr) && in_band & required != required {
        for ps in config.sps.iter().chain(config.pps.iter()) {
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(ps);
        }
    }
    for nal in NalUnits::new(sample, config.nal_length_size) {
        let nal = nal?;
        if nal
            .first()
            .is_none_or(|h| syntax.is_aud(syntax.nal_type(*h)))
        {
            continue;
        }
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(nal);
    }
    Ok(AccessUnit {
        idr,
        nal_units: count,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x64, 0x00, 0x1F, 0xAC];
    const PPS: &[u8] = &[0x68, 0xEE, 0x3C, 0x80];

    pub(crate) fn record(length_size: u8) -> Vec<u8> {
        let mut r = vec![1, 0x64, 0x00, 0x1F, 0xFC | (length_size - 1), 0xE1];
        r.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
        r.extend_from_slice(SPS);
        r.push(1);
        r.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
        r.extend_from_slice(PPS);
        r
    }

    fn sample(length_size: u8, nals: &[&[u8]]) -> Vec<u8> {
        let mut s = Vec::new();
        for nal in nals {
            let len = (nal.len() as u32).to_be_bytes();
            s.extend_from_slice(&len[4 - usize::from(length_size)..]);
            s.extend_from_slice(nal);
        }
        s
    }

    #[test]
    fn parses_config_record() {
        let cfg = parse_avc_config(&Bytes::from(record(4))).unwrap();
        assert_eq!(cfg.nal_length_size, 4);
        assert_eq!(cfg.sps, vec![Bytes::from_static(SPS)]);
        assert_eq!(cfg.pps, vec![Bytes::from_static(PPS)]);
    }

    #[test]
    fn annexb_with_1_2_4_byte_lengths() {
        let idr: &[u8] = &[0x65, 0x88, 0x84, 0x00];
        let sei: &[u8] = &[0x06, 0x05, 0x01];
        let aud: &[u8] = &[0x09, 0x10];
        for size in [1u8, 2, 4] {
            let cfg = parse_avc_config(&Bytes::from(record(size))).unwrap();
            let mut out = Vec::new();
            let au = to_annexb(&cfg, &sample(size, &[aud, sei, idr]), true, &mut out).unwrap();
            assert_eq!(
                au,
                AccessUnit {
                    idr: true,
                    nal_units: 2
                }
            );
            let mut want = AUD.to_vec();
            for nal in [SPS, PPS, sei, idr] {
                want.extend_from_slice(&START_CODE);
                want.extend_from_slice(nal);
            }
            assert_eq!(out, want, "length size {size}");
        }
    }

    #[test]
    fn non_idr_gets_no_parameter_sets_and_in_band_ones_are_not_doubled() {
        let cfg = parse_avc_config(&Bytes::from(record(4))).unwrap();
        let p_slice: &[u8] = &[0x41, 0x9A, 0x00];
        let mut out = Vec::new();
        let au = to_annexb(&cfg, &sample(4, &[p_slice]), false, &mut out).unwrap();
        assert!(!au.idr);
        assert_eq!(out, [&AUD[..], &START_CODE, p_slice].concat());

        let idr: &[u8] = &[0x65, 0x88];
        let mut out = Vec::new();
        to_annexb(&cfg, &sample(4, &[SPS, PPS, idr]), true, &mut out).unwrap();
        let want: Vec<u8> = [
            &AUD[..],
            &START_CODE,
            SPS,
            &START_CODE,
            PPS,
            &START_CODE,
            idr,
        ]
        .concat();
        assert_eq!(out, want);
    }

    #[test]
    fn empty_sample_has_no_nal_units() {
        let cfg = parse_avc_config(&Bytes::from(record(4))).unwrap();
        let mut out = Vec::new();
        let au = to_annexb(&cfg, &[], true, &mut out).unwrap();
        assert_eq!(au.nal_units, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn truncated_lengths_are_errors() {
        let cfg = parse_avc_config(&Bytes::from(record(4))).unwrap();
        let mut out = Vec::new();
        // Length says 10, only 3 bytes follow.
        let err = to_annexb(&cfg, &[0, 0, 0, 10, 0x65, 1, 2], true, &mut out).unwrap_err();
        assert_eq!(
            err,
            MuxError::MalformedVideoFrame("NAL unit length exceeds the frame")
        );
        // A valid NAL then 2 stray bytes (a 4-byte prefix cut short).
        let mut s = sample(4, &[&[0x65, 1]]);
        s.extend_from_slice(&[0, 0]);
        let err = to_annexb(&cfg, &s, true, &mut out).unwrap_err();
        assert_eq!(
            err,
            MuxError::MalformedVideoFrame("truncated NAL unit length prefix")
        );
        assert!(out.is_empty(), "nothing written before validation passed");
        // Maximal 4-byte length does not overflow.
        let err = to_annexb(&cfg, &[0xFF, 0xFF, 0xFF, 0xFF, 1], true, &mut out).unwrap_err();
        assert!(matches!(err, MuxError::MalformedVideoFrame(_)));
    }

    #[test]
    fn malformed_config_records_are_errors() {
        let good = record(4);
        // Every truncation of a valid record fails cleanly (except the full one).
        for len in 0..good.len() {
            let r = parse_avc_config(&Bytes::copy_from_slice(&good[..len]));
            assert!(
                matches!(r, Err(MuxError::MalformedAvcConfig(_))),
                "len {len}: {r:?}"
            );
        }
        let mut bad_version = good.clone();
        bad_version[0] = 0;
        assert_eq!(
            parse_avc_config(&Bytes::from(bad_version)),
            Err(MuxError::MalformedAvcConfig(
                "configurationVersion is not 1"
            ))
        );
        let mut long_sps = good.clone();
        long_sps[6..8].copy_from_slice(&0xFFFFu16.to_be_bytes());
        assert!(parse_avc_config(&Bytes::from(long_sps)).is_err());
    }
}
