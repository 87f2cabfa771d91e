//! Huffman-coded scans to DCT coefficients: sequential (`jdhuff.c`) and
//! progressive (`jdphuff.c`), with restart markers. Every scan's coefficients
//! are kept per component until all scans are read; the IDCT runs after.

use crate::markers::{div_ceil, ColorTransform, Event, Frame, HuffmanSpec, MarkerReader, ScanHeader, Tables, NATURAL_ORDER};
use crate::{ColorSpace, JpegError, Limits};

/// The quantised coefficients of one component, block by block, in natural
/// order, plus what the IDCT and upsampler need to know about it.
pub(crate) struct ComponentCoefficients {
    /// Blocks per row and block rows as allocated (whole MCUs).
    pub blocks_w: usize,
    pub blocks_h: usize,
    /// Size before upsampling (`downsampled_width/height`).
    pub width: usize,
    pub height: usize,
    pub coefs: Vec<[i16; 64]>,
    /// The quantisation table latched at the component's first scan
    /// (`jdinput.c` `latch_quant_tables`).
    pub quant: Option<[u16; 64]>,
}

pub(crate) struct Coefficients {
    pub frame: Frame,
    pub transform: ColorTransform,
    pub exif_orientation: Option<u8>,
    pub restart_interval: u16,
    pub components: Vec<ComponentCoefficients>,
    pub scans: usize,
    /// A progressive file that leaves low coefficients unrefined.
    pub unrefined: bool,
}

impl Coefficients {
    pub fn color_space(&self) -> ColorSpace {
        self.transform.color_space(&self.frame)
    }
}

/// Reads the whole file: markers, tables and every scan.
pub(crate) fn decode_coefficients(data: &[u8], limits: &Limits) -> Result<Coefficients, JpegError> {
    let mut reader = MarkerReader::new(data)?;
    let mut tables = Tables::default();
    let mut frame: Option<Frame> = None;
    let mut components: Vec<ComponentCoefficients> = Vec::new();
    let mut progress: Vec<ProgressiveState> = Vec::new();
    let mut scans = 0;
    loop {
        match reader.next_event(&mut tables, frame.as_ref())? {
            Event::Frame(f) => {
                check_limits(&f, limits)?;
                components = allocate(&f);
                progress = vec![ProgressiveState::default(); f.components.len()];
                frame = Some(f);
            }
            Event::Scan(scan) => {
                let f = frame.as_ref().expect("a scan header is only parsed after the frame");
                for sc in &scan.components {
                    let comp = &mut components[sc.index];
                    if comp.quant.is_none() {
                        let slot = f.components[sc.index].tq as usize;
                        comp.quant = Some(tables.quant[slot].ok_or_else(|| {
                            JpegError::Corrupt(format!("quantisation table {slot} is used before it is defined"))
                        })?);
                    }
                }
                if f.progressive {
                    check_progression(&scan, &mut progress)?;
                }
                let end = decode_scan(data, reader.pos, f, &scan, &tables, &mut components, scans)?;
                reader.pos = end;
                scans += 1;
            }
            Event::EndOfImage => break,
            Event::EndOfData => {
                // A sequential file whose data is complete decodes without its
                // EOI marker (libjpeg only warns); anything else is truncated.
                let complete = frame.as_ref().is_some_and(|f| !f.progressive) && components.iter().all(|c| c.quant.is_some());
                if complete {
                    break;
                }
                return Err(JpegError::Truncated(if frame.is_none() { "no frame header" } else { "no end-of-image marker" }));
            }
        }
    }
    let frame = frame.ok_or(JpegError::Truncated("no frame header"))?;
    if scans == 0 {
        return Err(JpegError::Truncated("no scan"));
    }
    if let Some(i) = components.iter().position(|c| c.quant.is_none()) {
        return Err(JpegError::Corrupt(format!("component {} appears in no scan", frame.components[i].id)));
    }
    // libjpeg smooths blocks whose low AC coefficients are not fully refined
    // (`jdcoefct.c` `smoothing_ok`, coefficients 1..=9); this decoder does not.
    let unrefined = frame.progressive && progress.iter().any(|p| p.bits[..10].iter().any(|&b| b != 0));
    Ok(Coefficients {
        unrefined,
        frame,
        exif_orientation: tables.exif_orientation,
        restart_interval: tables.restart_interval,
        transform: tables.transform,
        components,
        scans,
    })
}

fn check_limits(frame: &Frame, limits: &Limits) -> Result<(), JpegError> {
    let (w, h) = (frame.width, frame.height);
    if w.max(h) > limits.max_side {
        return Err(JpegError::TooLarge { width: w, height: h, limit: format!("{} px a side", limits.max_side) });
    }
    if w as u64 * h as u64 > limits.max_pixels {
        return Err(JpegError::TooLarge {
            width: w,
            height: h,
            limit: format!("{:.0} megapixels", limits.max_pixels as f64 / 1e6),
        });
    }
    Ok(())
}

fn allocate(frame: &Frame) -> Vec<ComponentCoefficients> {
    let (mcus_x, mcus_y) = frame.mcus();
    (0..frame.components.len())
        .map(|i| {
            let c = &frame.components[i];
            let (width, height) = frame.downsampled_size(i);
            let (blocks_w, blocks_h) = (mcus_x * c.h as usize, mcus_y * c.v as usize);
            ComponentCoefficients { blocks_w, blocks_h, width, height, coefs: vec![[0; 64]; blocks_w * blocks_h], quant: None }
        })
        .collect()
}

/// Which coefficient bits each component has received (`coef_bits` in
/// `jdphuff.c`): -1 for never, else the Al of the last scan.
#[derive(Clone)]
struct ProgressiveState {
    bits: [i8; 64],
}

impl Default for ProgressiveState {
    fn default() -> Self {
        Self { bits: [-1; 64] }
    }
}

/// `jdphuff.c` `start_pass_phuff_decoder`: a refinement scan must lower Al by
/// exactly one (fatal there too). An out-of-order progression is only a
/// warning in libjpeg, so it is accepted here as well.
fn check_progression(scan: &ScanHeader, progress: &mut [ProgressiveState]) -> Result<(), JpegError> {
    if scan.ah != 0 && scan.al + 1 != scan.ah {
        return Err(JpegError::Corrupt(format!("progressive refinement from bit {} to bit {}", scan.ah, scan.al)));
    }
    for sc in &scan.components {
        for k in scan.ss as usize..=scan.se as usize {
            progress[sc.index].bits[k] = scan.al as i8;
        }
    }
    Ok(())
}

/// A decoding table: 9-bit lookahead for short codes, canonical limits for
/// the rest (`jdhuff.c` `jpeg_make_d_derived_tbl`).
struct Huffman {
    /// For a 9-bit peek: (code length, symbol), length 0 if longer.
    lookup: Vec<(u8, u8)>,
    /// Largest code of each length (index 1..=16), -1 if none.
    max_code: [i32; 18],
    /// Symbol index offset of each length.
    val_offset: [i32; 18],
    symbols: Vec<u8>,
}

const LOOKAHEAD: u32 = 9;

impl Huffman {
    /// A DC table's symbols are magnitude categories, which must be at most
    /// 15 (`jpeg_make_d_derived_tbl` refuses others: "Bogus Huffman table
    /// definition"); an AC table's are any byte.
    fn new(spec: &HuffmanSpec, dc: bool) -> Result<Self, JpegError> {
        if dc && spec.symbols.iter().any(|&symbol| symbol > 15) {
            return Err(JpegError::Corrupt("a DC Huffman table with a symbol over 15".into()));
        }
        let mut lookup = vec![(0u8, 0u8); 1 << LOOKAHEAD];
        let mut max_code = [-1i32; 18];
        let mut val_offset = [0i32; 18];
        let mut code: i32 = 0;
        let mut k = 0usize;
        for len in 1..=16usize {
            let count = spec.counts[len - 1] as usize;
            if count > 0 {
                val_offset[len] = k as i32 - code;
                for _ in 0..count {
                    // A code that does not fit its length means a bad table.
                    if code >= (1 << len) {
                        return Err(JpegError::Corrupt("a Huffman table with too many codes of one length".into()));
                    }
                    if len as u32 <= LOOKAHEAD {
                        let shift = LOOKAHEAD - len as u32;
                        let first = (code as usize) << shift;
                        for entry in &mut lookup[first..first + (1 << shift)] {
                            *entry = (len as u8, spec.symbols[k]);
                        }
                    }
                    code += 1;
                    k += 1;
                }
                max_code[len] = code - 1;
            }
            code <<= 1;
        }
        max_code[17] = i32::MAX;
        Ok(Self { lookup, max_code, val_offset, symbols: spec.symbols.clone() })
    }
}

/// Entropy-coded bits, with byte stuffing and markers. At a marker (or the
/// end of the data) zeros are fed, as libjpeg does; consuming any of them
/// means the data ended early, which `overrun` reports.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    bits: u32,
    at_marker: bool,
    real_bits: u64,
    used_bits: u64,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos, acc: 0, bits: 0, at_marker: false, real_bits: 0, used_bits: 0 }
    }

    fn refill(&mut self) {
        while self.bits <= 56 {
            let mut byte = 0u8;
            if !self.at_marker {
                match self.data.get(self.pos) {
                    None => self.at_marker = true,
                    Some(&0xFF) => {
                        let mut next = self.pos + 1;
                        while self.data.get(next) == Some(&0xFF) {
                            next += 1;
                        }
                        if self.data.get(next) == Some(&0) {
                            byte = 0xFF;
                            self.pos = next + 1;
                            self.real_bits += 8;
                        } else {
                            self.at_marker = true;
                        }
                    }
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                        self.real_bits += 8;
                    }
                }
            }
            self.acc |= (byte as u64) << (56 - self.bits);
            self.bits += 8;
        }
    }

    fn peek(&mut self, n: u32) -> u32 {
        if self.bits < n {
            self.refill();
        }
        (self.acc >> (64 - n)) as u32
    }

    fn skip(&mut self, n: u32) {
        self.acc <<= n;
        self.bits -= n;
        self.used_bits += n as u64;
    }

    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek(n);
        self.skip(n);
        v
    }

    fn bit(&mut self) -> bool {
        self.bits(1) == 1
    }

    fn decode(&mut self, table: &Huffman) -> Result<u8, JpegError> {
        let peek = self.peek(16);
        let (len, symbol) = table.lookup[(peek >> (16 - LOOKAHEAD)) as usize];
        if len > 0 {
            self.skip(len as u32);
            return Ok(symbol);
        }
        for len in LOOKAHEAD as usize + 1..=16 {
            let code = (peek >> (16 - len)) as i32;
            if code <= table.max_code[len] {
                self.skip(len as u32);
                let index = (table.val_offset[len] + code) as usize;
                return table.symbols.get(index).copied().ok_or_else(|| JpegError::Corrupt("bad Huffman code".into()));
            }
        }
        Err(JpegError::Corrupt("bad Huffman code".into()))
    }

    /// `HUFF_EXTEND`: an `n`-bit magnitude category to a signed value.
    fn receive_extend(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        let v = self.bits(n) as i32;
        if v < (1 << (n - 1)) {
            v - (1 << n) + 1
        } else {
            v
        }
    }

    /// The length of an end-of-band run of class `r` (`EOBr`): `2^r` plus
    /// `r` more bits.
    fn eob_run(&mut self, r: u32) -> u32 {
        (1 << r) + self.bits(r)
    }

    fn overrun(&self) -> bool {
        self.at_marker && self.used_bits > self.real_bits
    }

    /// Drops the bits left in the buffer and consumes the restart marker
    /// `RST<expected>` (`jdhuff.c` `process_restart`).
    fn restart(&mut self, expected: u8) -> Result<(), JpegError> {
        // Stray bytes before the marker are skipped, as `next_marker` does.
        let mut p = self.pos;
        loop {
            while self.data.get(p).is_some_and(|&b| b != 0xFF) {
                p += 1;
            }
            while self.data.get(p) == Some(&0xFF) {
                p += 1;
            }
            if self.data.get(p) != Some(&0) {
                break;
            }
        }
        match self.data.get(p) {
            Some(&m) if m == 0xD0 + expected => {
                self.pos = p + 1;
                self.acc = 0;
                self.bits = 0;
                self.at_marker = false;
                self.real_bits = 0;
                self.used_bits = 0;
                Ok(())
            }
            None => Err(JpegError::Truncated("the data ends inside a scan")),
            _ => Err(JpegError::Corrupt(format!("restart marker RST{expected} missing"))),
        }
    }

    /// Where the marker after the scan starts.
    fn end(&self) -> usize {
        self.pos
    }
}

/// What a scan does to each block.
#[derive(Clone, Copy)]
enum Pass {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

/// Decodes one scan into the coefficient arrays; returns the position of the
/// marker that follows it.
fn decode_scan(
    data: &[u8],
    start: usize,
    frame: &Frame,
    scan: &ScanHeader,
    tables: &Tables,
    components: &mut [ComponentCoefficients],
    scan_number: usize,
) -> Result<usize, JpegError> {
    let pass = match (frame.progressive, scan.ss == 0, scan.ah == 0) {
        (false, _, _) => Pass::Sequential,
        (true, true, true) => Pass::DcFirst,
        (true, true, false) => Pass::DcRefine,
        (true, false, true) => Pass::AcFirst,
        (true, false, false) => Pass::AcRefine,
    };
    let table = |specs: &[Option<HuffmanSpec>; 4], slot: usize, dc: bool| -> Result<Huffman, JpegError> {
        let kind = if dc { "DC" } else { "AC" };
        specs[slot]
            .as_ref()
            .ok_or_else(|| JpegError::Corrupt(format!("{kind} Huffman table {slot} is used before it is defined")))
            .and_then(|spec| Huffman::new(spec, dc))
    };
    let needs_dc = matches!(pass, Pass::Sequential | Pass::DcFirst);
    let needs_ac = matches!(pass, Pass::Sequential | Pass::AcFirst | Pass::AcRefine);
    let mut dc_tables = Vec::new();
    let mut ac_tables = Vec::new();
    for sc in &scan.components {
        dc_tables.push(if needs_dc { Some(table(&tables.dc, sc.dc_table, true)?) } else { None });
        ac_tables.push(if needs_ac { Some(table(&tables.ac, sc.ac_table, false)?) } else { None });
    }

    // The blocks of one MCU, in coding order: (scan component, block index).
    let interleaved = scan.components.len() > 1;
    let (mcus_x, mcus_y) = if interleaved {
        frame.mcus()
    } else {
        let c = &components[scan.components[0].index];
        (div_ceil(c.width, 8), div_ceil(c.height, 8))
    };
    let mut reader = BitReader::new(data, start);
    let mut state = BlockState { dc_pred: [0; 4], eob_run: 0 };
    let restart_interval = tables.restart_interval as usize;
    let mut next_restart = 0u8;
    let total = mcus_x * mcus_y;
    for mcu in 0..total {
        if restart_interval > 0 && mcu > 0 && mcu % restart_interval == 0 {
            reader.restart(next_restart)?;
            next_restart = (next_restart + 1) % 8;
            state = BlockState { dc_pred: [0; 4], eob_run: 0 };
        }
        let (mx, my) = (mcu % mcus_x, mcu / mcus_x);
        for (s, sc) in scan.components.iter().enumerate() {
            let fc = &frame.components[sc.index];
            let comp = &mut components[sc.index];
            let (bw, bh) = if interleaved { (fc.h as usize, fc.v as usize) } else { (1, 1) };
            for by in 0..bh {
                for bx in 0..bw {
                    let block = &mut comp.coefs[(my * bh + by) * comp.blocks_w + mx * bw + bx];
                    let dc = dc_tables[s].as_ref();
                    let ac = ac_tables[s].as_ref();
                    match pass {
                        Pass::Sequential => decode_sequential(&mut reader, block, dc.unwrap(), ac.unwrap(), &mut state.dc_pred[s])?,
                        Pass::DcFirst => {
                            let diff = {
                                let t = reader.decode(dc.unwrap())?;
                                reader.receive_extend(t as u32)
                            };
                            state.dc_pred[s] = state.dc_pred[s].wrapping_add(diff);
                            block[0] = (state.dc_pred[s] << scan.al) as i16;
                        }
                        Pass::DcRefine => {
                            if reader.bit() {
                                block[0] |= (1i32 << scan.al) as i16;
                            }
                        }
                        Pass::AcFirst => decode_ac_first(&mut reader, block, ac.unwrap(), scan, &mut state.eob_run)?,
                        Pass::AcRefine => decode_ac_refine(&mut reader, block, ac.unwrap(), scan, &mut state.eob_run)?,
                    }
                }
            }
        }
        if reader.overrun() {
            return Err(if reader.end() >= data.len() {
                JpegError::Truncated("the data ends inside a scan")
            } else {
                JpegError::Corrupt(format!("scan {} ends early, at MCU {mcu} of {total}", scan_number + 1))
            });
        }
    }
    Ok(reader.end())
}

struct BlockState {
    dc_pred: [i32; 4],
    eob_run: u32,
}

/// `jdhuff.c` `decode_mcu_slow`, one block.
fn decode_sequential(
    reader: &mut BitReader,
    block: &mut [i16; 64],
    dc: &Huffman,
    ac: &Huffman,
    dc_pred: &mut i32,
) -> Result<(), JpegError> {
    let t = reader.decode(dc)?;
    *dc_pred = dc_pred.wrapping_add(reader.receive_extend(t as u32));
    block[0] = *dc_pred as i16;
    let mut k = 1;
    while k < 64 {
        let rs = reader.decode(ac)?;
        let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
        if s != 0 {
            k += r;
            block[NATURAL_ORDER[k.min(79)]] = reader.receive_extend(s) as i16;
        } else if r != 15 {
            break;
        } else {
            k += 15;
        }
        k += 1;
    }
    Ok(())
}

/// `jdphuff.c` `decode_mcu_AC_first`.
fn decode_ac_first(
    reader: &mut BitReader,
    block: &mut [i16; 64],
    ac: &Huffman,
    scan: &ScanHeader,
    eob_run: &mut u32,
) -> Result<(), JpegError> {
    if *eob_run > 0 {
        *eob_run -= 1;
        return Ok(());
    }
    let mut k = scan.ss as usize;
    while k <= scan.se as usize {
        let rs = reader.decode(ac)?;
        let (r, s) = ((rs >> 4) as u32, (rs & 15) as u32);
        if s != 0 {
            k += r as usize;
            let v = reader.receive_extend(s);
            block[NATURAL_ORDER[k.min(79)]] = (v << scan.al) as i16;
        } else if r == 15 {
            k += 15;
        } else {
            *eob_run = reader.eob_run(r) - 1;
            break;
        }
        k += 1;
    }
    Ok(())
}

/// `jdphuff.c` `decode_mcu_AC_refine`.
fn decode_ac_refine(
    reader: &mut BitReader,
    block: &mut [i16; 64],
    ac: &Huffman,
    scan: &ScanHeader,
    eob_run: &mut u32,
) -> Result<(), JpegError> {
    let p1: i16 = 1 << scan.al;
    let m1: i16 = (-1i16) << scan.al;
    let se = scan.se as usize;
    let mut k = scan.ss as usize;
    let refine = |reader: &mut BitReader, coef: &mut i16| {
        if reader.bit() && (*coef & p1) == 0 {
            *coef = coef.wrapping_add(if *coef >= 0 { p1 } else { m1 });
        }
    };
    if *eob_run == 0 {
        while k <= se {
            let rs = reader.decode(ac)?;
            let (mut r, s) = ((rs >> 4) as i32, (rs & 15) as u32);
            let mut value = 0i16;
            if s != 0 {
                // s != 1 is a bad code; libjpeg warns and goes on.
                value = if reader.bit() { p1 } else { m1 };
            } else if r != 15 {
                *eob_run = reader.eob_run(r as u32);
                break;
            }
            // Advance over nonzero coefficients (refining them) and r zero ones.
            while k <= se {
                let coef = &mut block[NATURAL_ORDER[k]];
                if *coef != 0 {
                    refine(reader, coef);
                } else {
                    if r == 0 {
                        break;
                    }
                    r -= 1;
                }
                k += 1;
            }
            if value != 0 {
                block[NATURAL_ORDER[k.min(79)]] = value;
            }
            k += 1;
        }
    }
    if *eob_run > 0 {
        while k <= se {
            let coef = &mut block[NATURAL_ORDER[k]];
            if *coef != 0 {
                refine(reader, coef);
            }
            k += 1;
        }
        *eob_run -= 1;
    }
    Ok(())
}
