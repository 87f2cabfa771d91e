//! Marker segments: frame, tables, scan headers, and the APP markers that
//! decide the colour space (`jdmarker.c`, `jdapimin.c`).

use crate::{exif, ColorSpace, JpegError};

/// One component of the frame header (SOF).
#[derive(Debug, Clone)]
pub(crate) struct FrameComponent {
    pub id: u8,
    /// Horizontal and vertical sampling factors.
    pub h: u8,
    pub v: u8,
    /// Quantisation table slot.
    pub tq: u8,
}

#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub width: u32,
    pub height: u32,
    pub progressive: bool,
    pub components: Vec<FrameComponent>,
    pub max_h: u8,
    pub max_v: u8,
}

impl Frame {
    /// MCUs per row and MCU rows of an interleaved scan.
    pub fn mcus(&self) -> (usize, usize) {
        (
            div_ceil(self.width as usize, 8 * self.max_h as usize),
            div_ceil(self.height as usize, 8 * self.max_v as usize),
        )
    }

    /// Size of component `c` before upsampling (`downsampled_width/height`).
    pub fn downsampled_size(&self, c: usize) -> (usize, usize) {
        let comp = &self.components[c];
        (
            div_ceil(self.width as usize * comp.h as usize, self.max_h as usize),
            div_ceil(self.height as usize * comp.v as usize, self.max_v as usize),
        )
    }
}

pub(crate) fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// What the APP0 (JFIF) and APP14 (Adobe) markers say about colour.
#[derive(Debug, Clone, Default)]
pub(crate) struct ColorTransform {
    pub jfif: bool,
    pub adobe_transform: Option<u8>,
}

impl ColorTransform {
    /// `jdapimin.c` `default_decompress_parms`.
    pub fn color_space(&self, frame: &Frame) -> ColorSpace {
        let ids: Vec<u8> = frame.components.iter().map(|c| c.id).collect();
        match ids.len() {
            1 => ColorSpace::Grayscale,
            3 if self.jfif => ColorSpace::YCbCr,
            3 => match self.adobe_transform {
                Some(0) => ColorSpace::Rgb,
                Some(_) => ColorSpace::YCbCr,
                None if ids == [b'R', b'G', b'B'] => ColorSpace::Rgb,
                None => ColorSpace::YCbCr,
            },
            _ => match self.adobe_transform {
                Some(0) | None => ColorSpace::Cmyk,
                Some(_) => ColorSpace::Ycck,
            },
        }
    }
}

/// A Huffman table as stored: code counts per length and the symbols.
#[derive(Debug, Clone)]
pub(crate) struct HuffmanSpec {
    pub counts: [u8; 16],
    pub symbols: Vec<u8>,
}

#[derive(Debug, Clone)]
pub(crate) struct ScanComponent {
    /// Index into the frame's components.
    pub index: usize,
    pub dc_table: usize,
    pub ac_table: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct ScanHeader {
    pub components: Vec<ScanComponent>,
    /// Spectral selection start and end, successive approximation high/low.
    pub ss: u8,
    pub se: u8,
    pub ah: u8,
    pub al: u8,
}

/// Everything the markers have defined so far.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    /// Quantisation tables in natural (row-major) order.
    pub quant: [Option<[u16; 64]>; 4],
    pub dc: [Option<HuffmanSpec>; 4],
    pub ac: [Option<HuffmanSpec>; 4],
    pub restart_interval: u16,
    pub transform: ColorTransform,
    pub exif_orientation: Option<u8>,
}

/// Zig-zag position to natural position, with 16 extra entries that absorb
/// run-lengths past the end of a corrupt block (`jpeg_natural_order`).
pub(crate) const NATURAL_ORDER: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61,
    54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
];

/// What the main decoding loop is handed next.
pub(crate) enum Event {
    Frame(Frame),
    Scan(ScanHeader),
    EndOfImage,
    /// The data ended without an end-of-image marker.
    EndOfData,
}

/// Walks the marker segments of a file.
pub(crate) struct MarkerReader<'a> {
    pub data: &'a [u8],
    pub pos: usize,
}

pub(crate) struct Header {
    pub frame: Frame,
    pub transform: ColorTransform,
    pub restart_interval: u16,
}

/// Parses up to the first scan header: enough for size and coding.
pub(crate) fn parse_until_first_scan(data: &[u8]) -> Result<Header, JpegError> {
    let mut reader = MarkerReader::new(data)?;
    let mut tables = Tables::default();
    let mut frame = None;
    loop {
        match reader.next_event(&mut tables, frame.as_ref())? {
            Event::Frame(f) => frame = Some(f),
            Event::Scan(_) => break,
            Event::EndOfImage | Event::EndOfData => break,
        }
    }
    let frame = frame.ok_or(JpegError::Truncated("no frame header"))?;
    Ok(Header { frame, transform: tables.transform, restart_interval: tables.restart_interval })
}

impl<'a> MarkerReader<'a> {
    pub fn new(data: &'a [u8]) -> Result<Self, JpegError> {
        if data.len() < 2 || data[0] != 0xFF || data[1] != 0xD8 {
            return Err(JpegError::NotJpeg);
        }
        Ok(Self { data, pos: 2 })
    }

    /// Finds the next marker, skipping stray bytes and fill bytes as
    /// `jdmarker.c` `next_marker` does. `None` at the end of the data.
    fn next_marker(&mut self) -> Option<u8> {
        loop {
            while self.pos < self.data.len() && self.data[self.pos] != 0xFF {
                self.pos += 1;
            }
            while self.pos < self.data.len() && self.data[self.pos] == 0xFF {
                self.pos += 1;
            }
            let code = *self.data.get(self.pos)?;
            self.pos += 1;
            if code != 0 {
                return Some(code);
            }
        }
    }

    /// The payload of a segment with a length field.
    fn segment(&mut self, name: &'static str) -> Result<&'a [u8], JpegError> {
        let len_bytes = self.data.get(self.pos..self.pos + 2).ok_or(JpegError::Truncated(name))?;
        let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
        if len < 2 {
            return Err(JpegError::Corrupt(format!("{name} segment has length {len}")));
        }
        let body = self.data.get(self.pos + 2..self.pos + len).ok_or(JpegError::Truncated(name))?;
        self.pos += len;
        Ok(body)
    }

    /// Reads segments until something the decoder must act on.
    pub fn next_event(&mut self, tables: &mut Tables, frame: Option<&Frame>) -> Result<Event, JpegError> {
        loop {
            let Some(marker) = self.next_marker() else { return Ok(Event::EndOfData) };
            match marker {
                0xC0..=0xC2 => {
                    if frame.is_some() {
                        return Err(JpegError::Unsupported("more than one frame".into()));
                    }
                    let body = self.segment("frame header")?;
                    return Ok(Event::Frame(parse_frame(body, marker == 0xC2)?));
                }
                0xC3 | 0xC7 | 0xCB | 0xCF => return Err(JpegError::Unsupported("lossless JPEG".into())),
                0xC5 | 0xC6 | 0xCD | 0xCE => return Err(JpegError::Unsupported("hierarchical JPEG".into())),
                0xC9 | 0xCA => return Err(JpegError::Unsupported("arithmetic coding".into())),
                0xCC => return Err(JpegError::Unsupported("arithmetic coding".into())),
                0xC4 => parse_huffman(self.segment("Huffman table")?, tables)?,
                0xDB => parse_quant(self.segment("quantisation table")?, tables)?,
                0xDD => {
                    let body = self.segment("restart interval")?;
                    if body.len() != 2 {
                        return Err(JpegError::Corrupt("restart interval segment of the wrong length".into()));
                    }
                    tables.restart_interval = u16::from_be_bytes([body[0], body[1]]);
                }
                0xDA => {
                    let frame = frame.ok_or_else(|| JpegError::Corrupt("scan before the frame header".into()))?;
                    let body = self.segment("scan header")?;
                    return Ok(Event::Scan(parse_scan(body, frame)?));
                }
                0xD9 => return Ok(Event::EndOfImage),
                0xD8 => return Err(JpegError::Corrupt("a second start-of-image marker".into())),
                // Restart markers outside a scan and TEM are ignored, as libjpeg does.
                0xD0..=0xD7 | 0x01 => {}
                0xE0 => {
                    let body = self.segment("APP0")?;
                    if body.starts_with(b"JFIF\0") {
                        tables.transform.jfif = true;
                    }
                }
                0xE1 => {
                    let body = self.segment("APP1")?;
                    if let Some(exif) = body.strip_prefix(b"Exif\0\0") {
                        if tables.exif_orientation.is_none() {
                            tables.exif_orientation = exif::orientation(exif);
                        }
                    }
                }
                0xEE => {
                    let body = self.segment("APP14")?;
                    // "Adobe", version (2), flags0 (2), flags1 (2), transform (1).
                    if body.len() >= 12 && body.starts_with(b"Adobe") {
                        tables.transform.adobe_transform = Some(body[11]);
                    }
                }
                // DNL, other APPn, COM, JPG extensions: skipped.
                0xDC | 0xDE | 0xDF | 0xE2..=0xED | 0xEF | 0xF0..=0xFE | 0xC8 => {
                    self.segment("marker")?;
                }
                other => return Err(JpegError::Corrupt(format!("unknown marker 0xFF{other:02X}"))),
            }
        }
    }
}

fn parse_frame(body: &[u8], progressive: bool) -> Result<Frame, JpegError> {
    if body.len() < 6 {
        return Err(JpegError::Truncated("frame header"));
    }
    if body[0] != 8 {
        return Err(JpegError::Unsupported(format!("{}-bit samples", body[0])));
    }
    let height = u16::from_be_bytes([body[1], body[2]]) as u32;
    let width = u16::from_be_bytes([body[3], body[4]]) as u32;
    let n = body[5] as usize;
    if width == 0 || height == 0 {
        return Err(JpegError::Unsupported("an image height given later by a DNL marker, or an empty image".into()));
    }
    if !(n == 1 || n == 3 || n == 4) {
        return Err(JpegError::Unsupported(format!("{n} colour components")));
    }
    if body.len() < 6 + 3 * n {
        return Err(JpegError::Truncated("frame header"));
    }
    let mut components = Vec::with_capacity(n);
    for c in body[6..6 + 3 * n].chunks_exact(3) {
        let (h, v) = (c[1] >> 4, c[1] & 15);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return Err(JpegError::Corrupt(format!("sampling factors {h}x{v}")));
        }
        if c[2] > 3 {
            return Err(JpegError::Corrupt(format!("quantisation table {}", c[2])));
        }
        components.push(FrameComponent { id: c[0], h, v, tq: c[2] });
    }
    let max_h = components.iter().map(|c| c.h).max().unwrap_or(1);
    let max_v = components.iter().map(|c| c.v).max().unwrap_or(1);
    for c in &components {
        if max_h % c.h != 0 || max_v % c.v != 0 {
            // jdsample.c: "Fractional sampling not implemented yet".
            return Err(JpegError::Unsupported(format!("fractional chroma sampling {}x{} of {max_h}x{max_v}", c.h, c.v)));
        }
    }
    // An MCU holds at most 10 blocks (ITU T.81 B.2.3; jdinput.c checks it).
    if components.len() > 1 && components.iter().map(|c| c.h as usize * c.v as usize).sum::<usize>() > 10 {
        return Err(JpegError::Corrupt("more than 10 blocks per MCU".into()));
    }
    Ok(Frame { width, height, progressive, components, max_h, max_v })
}

fn parse_quant(mut body: &[u8], tables: &mut Tables) -> Result<(), JpegError> {
    while !body.is_empty() {
        let (precision, slot) = (body[0] >> 4, (body[0] & 15) as usize);
        if slot > 3 || precision > 1 {
            return Err(JpegError::Corrupt(format!("quantisation table {slot} of precision {precision}")));
        }
        let size = if precision == 0 { 64 } else { 128 };
        let values = body.get(1..1 + size).ok_or(JpegError::Truncated("quantisation table"))?;
        let mut table = [0u16; 64];
        for (k, natural) in NATURAL_ORDER[..64].iter().enumerate() {
            table[*natural] = if precision == 0 {
                values[k] as u16
            } else {
                u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
            };
        }
        tables.quant[slot] = Some(table);
        body = &body[1 + size..];
    }
    Ok(())
}

fn parse_huffman(mut body: &[u8], tables: &mut Tables) -> Result<(), JpegError> {
    while !body.is_empty() {
        if body.len() < 17 {
            return Err(JpegError::Truncated("Huffman table"));
        }
        let (class, slot) = (body[0] >> 4, (body[0] & 15) as usize);
        if class > 1 || slot > 3 {
            return Err(JpegError::Corrupt(format!("Huffman table class {class} slot {slot}")));
        }
        let mut counts = [0u8; 16];
        counts.copy_from_slice(&body[1..17]);
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 {
            return Err(JpegError::Corrupt("a Huffman table with more than 256 codes".into()));
        }
        let symbols = body.get(17..17 + total).ok_or(JpegError::Truncated("Huffman table"))?.to_vec();
        let spec = Some(HuffmanSpec { counts, symbols });
        if class == 0 {
            tables.dc[slot] = spec;
        } else {
            tables.ac[slot] = spec;
        }
        body = &body[17 + total..];
    }
    Ok(())
}

fn parse_scan(body: &[u8], frame: &Frame) -> Result<ScanHeader, JpegError> {
    let n = *body.first().ok_or(JpegError::Truncated("scan header"))? as usize;
    if n == 0 || n > 4 || body.len() < 1 + 2 * n + 3 {
        return Err(JpegError::Corrupt(format!("scan header with {n} components")));
    }
    let mut components = Vec::with_capacity(n);
    for c in body[1..1 + 2 * n].chunks_exact(2) {
        let index = frame
            .components
            .iter()
            .position(|fc| fc.id == c[0])
            .ok_or_else(|| JpegError::Corrupt(format!("scan names component {} that the frame lacks", c[0])))?;
        if components.iter().any(|s: &ScanComponent| s.index == index) {
            return Err(JpegError::Corrupt("a component twice in one scan".into()));
        }
        let (dc_table, ac_table) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
        if dc_table > 3 || ac_table > 3 {
            return Err(JpegError::Corrupt("Huffman table slot above 3".into()));
        }
        components.push(ScanComponent { index, dc_table, ac_table });
    }
    let tail = &body[1 + 2 * n..];
    let (ss, se, ah, al) = (tail[0], tail[1], tail[2] >> 4, tail[2] & 15);
    if frame.progressive {
        let dc = ss == 0;
        if (dc && se != 0) || (!dc && (se < ss || se > 63 || n != 1)) || al > 13 || ah > 13 {
            return Err(JpegError::Corrupt(format!("progressive scan parameters Ss={ss} Se={se} Ah={ah} Al={al}")));
        }
    }
    // Sequential scans: libjpeg only warns about odd Ss/Se/Ah/Al and decodes
    // the whole band; so does this decoder.
    if n > 1 && components.iter().map(|c| frame.components[c.index].h as usize * frame.components[c.index].v as usize).sum::<usize>() > 10 {
        return Err(JpegError::Corrupt("more than 10 blocks per MCU".into()));
    }
    Ok(ScanHeader { components, ss, se, ah, al })
}
