//! AAC from FLV framing (AudioSpecificConfig + raw access units) to ADTS, the framing
//! MPEG-TS uses for AAC (stream type 0x0F): each frame gets a 7-byte header carrying the
//! profile, sampling rate and channels that FLV sends once, out of band.

use super::error::MuxError;

/// The fields of an AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1) that ADTS carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AacConfig {
    /// ADTS `profile` = audio object type - 1 (0 Main, 1 LC, 2 SSR, 3 LTP).
    pub profile: u8,
    /// `sampling_frequency_index` (0..=12) of the AAC core.
    pub sampling_index: u8,
    /// `channel_configuration` (1..=7).
    pub channels: u8,
}

/// ADTS header length without CRC.
pub(crate) const ADTS_HEADER_LEN: usize = 7;
/// ADTS `aac_frame_length` is 13 bits and includes the header.
const ADTS_MAX_FRAME: usize = 0x1FFF;

/// MSB-first bit reader over a byte slice; `None` when the data runs out.
struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl BitReader<'_> {
    fn read(&mut self, bits: u32) -> Option<u32> {
        let mut value = 0u32;
        for _ in 0..bits {
            let byte = *self.data.get(self.bit / 8)?;
            let b = (byte >> (7 - (self.bit % 8))) & 1;
            value = (value << 1) | u32::from(b);
            self.bit += 1;
        }
        Some(value)
    }

    /// GetAudioObjectType(): 5 bits, escape 31 → 32 + 6 bits.
    fn object_type(&mut self) -> Option<u32> {
        match self.read(5)? {
            31 => Some(32 + self.read(6)?),
            t => Some(t),
        }
    }

    /// A sampling frequency index; the escape 15 (explicit 24-bit rate) is returned as 15
    /// after skipping the rate.
    fn sampling_index(&mut self) -> Option<u32> {
        let index = self.read(4)?;
        if index == 15 {
            self.read(24)?;
        }
        Some(index)
    }
}

const TRUNCATED: MuxError = MuxError::MalformedAacConfig("truncated");

/// Parses an AudioSpecificConfig (the body of an AAC sequence header after the 2-byte
/// FLV audio header).
///
/// HE-AAC v1/v2 with explicit SBR/PS signalling (object type 5/29) is reduced to its AAC
/// core: ADTS describes the core and decoders find SBR/PS implicitly, as ffmpeg's ADTS
/// muxer does.
pub(crate) fn parse_asc(data: &[u8]) -> Result<AacConfig, MuxError> {
    let mut r = BitReader { data, bit: 0 };
    let mut object_type = r.object_type().ok_or(TRUNCATED)?;
    let sampling_index = r.sampling_index().ok_or(TRUNCATED)?;
    let channels = r.read(4).ok_or(TRUNCATED)?;
    if object_type == 5 || object_type == 29 {
        r.sampling_index().ok_or(TRUNCATED)?; // extension (output) rate, implied by SBR
        object_type = r.object_type().ok_or(TRUNCATED)?;
    }
    let profile = match object_type {
        0 => return Err(MuxError::MalformedAacConfig("audio object type 0")),
        1..=4 => object_type - 1,
        other => {
            let name = match other {
                17 => " (ER AAC LC)",
                23 => " (ER AAC LD)",
                39 => " (ER AAC ELD)",
                42 => " (USAC / xHE-AAC)",
                _ => "",
            };
            return Err(MuxError::UnsupportedAacConfig(format!(
                "audio object type {other}{name}; ADTS carries types 1-4 (AAC Main/LC/SSR/LTP)"
            )));
        }
    };
    match sampling_index {
        0..=12 => {}
        15 => {
            return Err(MuxError::UnsupportedAacConfig(
                "explicit sampling frequency (index 15) has no ADTS index".to_owned(),
            ));
        }
        _ => {
            return Err(MuxError::MalformedAacConfig(
                "reserved sampling frequency index",
            ));
        }
    }
    match channels {
        1..=7 => {}
        0 => {
            return Err(MuxError::UnsupportedAacConfig(
                "channel configuration 0 (program config element)".to_owned(),
            ));
        }
        other => {
            return Err(MuxError::UnsupportedAacConfig(format!(
                "channel configuration {other}; ADTS carries 1-7"
            )));
        }
    }
    // All three values were range-checked above, so the narrowing is lossless.
    Ok(AacConfig {
        profile: u8::try_from(profile).map_err(|_| TRUNCATED)?,
        sampling_index: u8::try_from(sampling_index).map_err(|_| TRUNCATED)?,
        channels: u8::try_from(channels).map_err(|_| TRUNCATED)?,
    })
}

/// The 7-byte ADTS header (MPEG-4, no CRC) for a raw AAC frame of `raw_len` bytes.
pub(crate) fn adts_header(
    config: &AacConfig,
    raw_len: usize,
) -> Result<[u8; ADTS_HEADER_LEN], MuxError> {
    let frame_len = raw_len
        .checked_add(ADTS_HEADER_LEN)
        .filter(|&n| n <= ADTS_MAX_FRAME)
        .ok_or(MuxError::MalformedAudioFrame(
            "frame longer than ADTS allows (8184 bytes)",
        ))?;
    // frame_len <= 0x1FFF, so the shifted parts below fit their bytes.
    let len = u16::try_from(frame_len)
        .map_err(|_| MuxError::MalformedAudioFrame("frame longer than ADTS allows (8184 bytes)"))?;
    let AacConfig {
        profile,
        sampling_index,
        channels,
    } = *config;
    Ok([
        0xFF,
        0xF1, // syncword, MPEG-4, layer 0, protection_absent
        (profile << 6) | (sampling_index << 2) | (channels >> 2),
        ((channels & 0x03) << 6) | ((len >> 11) as u8 & 0x03),
        ((len >> 3) & 0xFF) as u8,
        (((len & 0x07) as u8) << 5) | 0x1F, // + buffer fullness 0x7FF (VBR), high bits
        0xFC,                               // buffer fullness low bits, 1 raw data block
    ])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lc_44100_stereo() {
        let cfg = parse_asc(&[0x12, 0x10]).unwrap();
        assert_eq!(
            cfg,
            AacConfig {
                profile: 1,
                sampling_index: 4,
                channels: 2
            }
        );
        // 100-byte frame → aac_frame_length 107 = 0b000_0000_1101_011.
        assert_eq!(
            adts_header(&cfg, 100).unwrap(),
            [0xFF, 0xF1, 0x50, 0x80, 0x0D, 0x7F, 0xFC]
        );
        // Largest frame: length 0x1FFF uses all 13 bits.
        assert_eq!(
            adts_header(&cfg, 0x1FFF - 7).unwrap(),
            [0xFF, 0xF1, 0x50, 0x83, 0xFF, 0xFF, 0xFC]
        );
        assert!(adts_header(&cfg, 0x1FFF - 6).is_err());
    }

    #[test]
    fn lc_48000_mono_and_six_channels() {
        // object type 2, index 3 (48 kHz), channels 1: 00010 0011 0001 000
        let cfg = parse_asc(&[0x11, 0x88]).unwrap();
        assert_eq!((cfg.profile, cfg.sampling_index, cfg.channels), (1, 3, 1));
        // channels 6: 00010 0011 0110 000
        let cfg = parse_asc(&[0x11, 0xB0]).unwrap();
        assert_eq!(cfg.channels, 6);
        let h = adts_header(&cfg, 0).unwrap();
        assert_eq!(h[2] & 0x01, 1, "channel bit 2 in byte 2");
        assert_eq!(h[3] >> 6, 2, "channel bits 1..0 in byte 3");
    }

    #[test]
    fn he_aac_reduces_to_the_lc_core() {
        // HE-AAC explicit: type 5, core index 6 (24 kHz), ch 2, ext index 3 (48 kHz), type 2.
        // 00101 0110 0010 0011 00010 → 0x2B 0x11 0x88 (padding 0s)
        let cfg = parse_asc(&[0x2B, 0x11, 0x88]).unwrap();
        assert_eq!((cfg.profile, cfg.sampling_index, cfg.channels), (1, 6, 2));
    }

    #[test]
    fn unsupported_and_malformed_configs() {
        assert_eq!(parse_asc(&[]), Err(TRUNCATED));
        assert_eq!(parse_asc(&[0x12]), Err(TRUNCATED));
        // USAC: escape 31, 6 bits = 10 → 42. 11111 001010 0100 0010
        let err = parse_asc(&[0xF9, 0x48, 0x40]).unwrap_err();
        assert!(err.is_unsupported(), "{err}");
        assert!(err.to_string().contains("42"), "{err}");
        // channel configuration 0: 00010 0100 0000 000
        assert!(parse_asc(&[0x12, 0x00]).unwrap_err().is_unsupported());
        // reserved sampling index 13: 00010 1101 0010 000
        assert_eq!(
            parse_asc(&[0x16, 0x90]),
            Err(MuxError::MalformedAacConfig(
                "reserved sampling frequency index"
            ))
        );
        // explicit frequency: 00010 1111 <24 bits> 0010
        assert!(
            parse_asc(&[0x17, 0x80, 0x00, 0x00, 0x10])
                .unwrap_err()
                .is_unsupported()
        );
    }
}
