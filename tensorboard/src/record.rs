//! TFRecord framing, the container of an event file: each record is
//!
//! ```text
//! u64 length (little-endian) | u32 masked CRC-32C of those 8 bytes
//! data (length bytes)        | u32 masked CRC-32C of the data
//! ```
//!
//! where the mask is `((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping),
//! as TensorFlow's `tsl/lib/hash/crc32c.h` defines it.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
const MASK_DELTA: u32 = 0xa282_ead8;

/// The CRC-32C (Castagnoli) of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    CRC32C.checksum(bytes)
}

/// The masked CRC-32C TFRecord stores.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    c.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Writes one record holding `data`.
pub fn write_record(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

/// Splits `bytes` (the contents of `path`, named in errors) into records,
/// checking every length and both CRCs of each.
pub fn parse_records(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let corrupt = |index: usize, offset: usize, what: String| Error::Corrupt {
        path: path.to_path_buf(),
        index,
        offset: offset as u64,
        what,
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let index = out.len();
        let rest = &bytes[at..];
        if rest.len() < 12 {
            return Err(corrupt(
                index,
                at,
                format!("{} bytes left, a record header takes 12", rest.len()),
            ));
        }
        let len_bytes: [u8; 8] = rest[..8].try_into().expect("8 bytes");
        let len_crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        if masked_crc(&len_bytes) != len_crc {
            return Err(corrupt(index, at, "length CRC does not match".into()));
        }
        let len = u64::from_le_bytes(len_bytes);
        let available = (rest.len() - 12) as u64;
        if available < 4 || len > available - 4 {
            return Err(corrupt(
                index,
                at,
                format!("length {len}, but only {available} bytes follow the header"),
            ));
        }
        let len = len as usize;
        let data = &rest[12..12 + len];
        let data_crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().expect("4 bytes"));
        if masked_crc(data) != data_crc {
            return Err(corrupt(index, at, "data CRC does not match".into()));
        }
        out.push(data.to_vec());
        at += 16 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The catalogue's check value of CRC-32C (iSCSI): the CRC of "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }
}
