//! A grouped bar chart as a PNG, without dependencies: the geometry ([`layout`]), a palette
//! canvas with a 5×7 bitmap font ([`Canvas`]) and a minimal PNG encoder ([`encode_png`]:
//! 8-bit palette, "Up" row filter, zlib with one fixed-Huffman deflate block whose only
//! matches are runs at distance 1 — charts are mostly flat colour, so that is enough).
//! Everything here is pure and unit-tested.

/// One series of bars: a colour in the legend and one value per group.
#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    /// The legend label.
    pub label: String,
    /// RGB colour.
    pub color: [u8; 3],
    /// One value per group (`NaN`: no bar).
    pub values: Vec<f64>,
}

/// A chart to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// The title (drawn upper-case).
    pub title: String,
    /// The y axis' unit, e.g. `GBIT/S`.
    pub unit: String,
    /// The groups' labels, e.g. `P1`, `P4`.
    pub groups: Vec<String>,
    /// The series, drawn left to right inside each group.
    pub series: Vec<BarSeries>,
}

/// A rectangle in pixels (`x`, `y` top-left, growing right and down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// One bar's place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    /// Index into [`Chart::groups`].
    pub group: usize,
    /// Index into [`Chart::series`].
    pub series: usize,
    /// The value it shows.
    pub value: f64,
    /// Its rectangle (zero height for `NaN`, 0 or negative values).
    pub rect: Rect,
}

/// Where everything goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Image size.
    pub width: u32,
    pub height: u32,
    /// The plot area (bars grow up from its bottom edge).
    pub plot: Rect,
    /// The value at the top of the plot area.
    pub axis_max: f64,
    /// Gridline values, from 0 up to `axis_max`.
    pub ticks: Vec<f64>,
    /// The bars, group by group.
    pub bars: Vec<Bar>,
    /// Each group's horizontal span.
    pub groups: Vec<Rect>,
    /// The legend's top-left corner.
    pub legend: (u32, u32),
}

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 560;
const PLOT: Rect = Rect {
    x: 70,
    y: 76,
    w: 620,
    h: 420,
};
/// The fraction of a group's width its bars take.
const GROUP_FILL: f64 = 0.84;

/// A "nice" gridline step (1, 2 or 5 × 10^k) giving at most `max_ticks` steps up to `max`.
pub fn nice_step(max: f64, max_ticks: u32) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / f64::from(max_ticks.max(1));
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// Places the plot, gridlines, bars and legend of `chart`.
pub fn layout(chart: &Chart) -> Layout {
    let max = chart
        .series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let step = nice_step(max, 6);
    let axis_max = if max > 0.0 {
        (max / step).ceil() * step
    } else {
        step
    };
    let ticks: Vec<f64> = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|t| *t <= axis_max + step * 1e-9)
        .collect();
    let n_groups = chart.groups.len().max(1) as u32;
    let n_series = chart.series.len().max(1) as u32;
    let group_w = PLOT.w / n_groups;
    let bar_w = ((f64::from(group_w) * GROUP_FILL) / f64::from(n_series)).floor() as u32;
    let pad = (group_w - bar_w * n_series) / 2;
    let bottom = PLOT.y + PLOT.h;
    let mut bars = Vec::new();
    let mut groups = Vec::new();
    for g in 0..chart.groups.len() {
        let gx = PLOT.x + g as u32 * group_w;
        groups.push(Rect {
            x: gx,
            y: bottom,
            w: group_w,
            h: 0,
        });
        for (s, series) in chart.series.iter().enumerate() {
            let value = series.values.get(g).copied().unwrap_or(f64::NAN);
            let h = if value.is_finite() && value > 0.0 {
                ((value / axis_max) * f64::from(PLOT.h)).round() as u32
            } else {
                0
            }
            .min(PLOT.h);
            bars.push(Bar {
                group: g,
                series: s,
                value,
                rect: Rect {
                    x: gx + pad + s as u32 * bar_w + 1,
                    y: bottom - h,
                    w: bar_w.saturating_sub(2).max(1),
                    h,
                },
            });
        }
    }
    Layout {
        width: WIDTH,
        height: HEIGHT,
        plot: PLOT,
        axis_max,
        ticks,
        bars,
        groups,
        legend: (PLOT.x + PLOT.w + 30, PLOT.y + 10),
    }
}

/// A gridline's label: as many decimals as the step needs.
pub fn tick_label(t: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{t:.0}")
    } else if step >= 0.1 {
        format!("{t:.1}")
    } else {
        format!("{t:.2}")
    }
}

/// `12.3` for values under 100, `123` above.
pub fn value_label(v: f64) -> String {
    if !v.is_finite() {
        "N/A".into()
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Palette indexes of the fixed colours; series colours follow.
const BACKGROUND: u8 = 0;
const INK: u8 = 1;
const GRID: u8 = 2;
const FIRST_SERIES: u8 = 3;

/// Draws `chart` and encodes it as a PNG.
pub fn render_png(chart: &Chart) -> Vec<u8> {
    let l = layout(chart);
    let mut palette = vec![[255, 255, 255], [30, 30, 30], [215, 215, 215]];
    palette.extend(chart.series.iter().map(|s| s.color));
    let mut c = Canvas::new(l.width, l.height);
    let bottom = l.plot.y + l.plot.h;

    c.text(l.plot.x, 18, 2, INK, &chart.title);
    let step = l.ticks.get(1).copied().unwrap_or(l.axis_max);
    for &t in &l.ticks {
        let y = bottom - ((t / l.axis_max) * f64::from(l.plot.h)).round() as u32;
        c.fill(
            Rect {
                x: l.plot.x,
                y,
                w: l.plot.w,
                h: 1,
            },
            GRID,
        );
        let label = tick_label(t, step);
        let w = Canvas::text_width(&label, 2);
        c.text(
            l.plot.x.saturating_sub(w + 8),
            y.saturating_sub(7),
            2,
            INK,
            &label,
        );
    }
    c.text(8, l.plot.y - 30, 2, INK, &chart.unit);
    for bar in &l.bars {
        c.fill(bar.rect, FIRST_SERIES + bar.series as u8);
        if bar.value.is_finite() {
            let label = value_label(bar.value);
            let w = Canvas::text_width(&label, 1);
            let cx = bar.rect.x + bar.rect.w / 2;
            c.text(
                cx.saturating_sub(w / 2),
                bar.rect.y.saturating_sub(10),
                1,
                INK,
                &label,
            );
        }
    }
    // Axes.
    c.fill(
        Rect {
            x: l.plot.x,
            y: bottom,
            w: l.plot.w,
            h: 2,
        },
        INK,
    );
    c.fill(
        Rect {
            x: l.plot.x - 2,
            y: l.plot.y,
            w: 2,
            h: l.plot.h + 2,
        },
        INK,
    );
    for (g, span) in l.groups.iter().enumerate() {
        let label = &chart.groups[g];
        let w = Canvas::text_width(label, 2);
        c.text(
            span.x + (span.w.saturating_sub(w)) / 2,
            bottom + 12,
            2,
            INK,
            label,
        );
    }
    let (lx, ly) = l.legend;
    for (s, series) in chart.series.iter().enumerate() {
        let y = ly + s as u32 * 30;
        c.fill(
            Rect {
                x: lx,
                y,
                w: 18,
                h: 18,
            },
            FIRST_SERIES + s as u8,
        );
        c.text(lx + 26, y + 2, 2, INK, &series.label);
    }
    encode_png(l.width, l.height, &palette, &c.pixels)
}

/// An image of palette indexes.
pub struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with palette entry 0.
    pub fn new(width: u32, height: u32) -> Self {
        Canvas {
            width,
            height,
            pixels: vec![BACKGROUND; (width * height) as usize],
        }
    }

    /// Fills `r` (clipped to the canvas) with palette entry `color`.
    pub fn fill(&mut self, r: Rect, color: u8) {
        for y in r.y..(r.y + r.h).min(self.height) {
            let row = (y * self.width) as usize;
            let (x0, x1) = (r.x.min(self.width), (r.x + r.w).min(self.width));
            self.pixels[row + x0 as usize..row + x1 as usize].fill(color);
        }
    }

    /// The width of `text` drawn at `scale`.
    pub fn text_width(text: &str, scale: u32) -> u32 {
        (text.chars().count() as u32 * 6).saturating_sub(1) * scale
    }

    /// Draws `text` (upper-cased; unknown characters are blank) with its top-left at `x, y`.
    pub fn text(&mut self, x: u32, y: u32, scale: u32, color: u8, text: &str) {
        for (i, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + i as u32 * 6 * scale;
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..5u32 {
                    if bits & (0b10000 >> col) != 0 {
                        self.fill(
                            Rect {
                                x: gx + col * scale,
                                y: y + row as u32 * scale,
                                w: scale,
                                h: scale,
                            },
                            color,
                        );
                    }
                }
            }
        }
    }

    /// The palette index at `x, y`.
    #[cfg(test)]
    fn at(&self, x: u32, y: u32) -> u8 {
        self.pixels[(y * self.width + x) as usize]
    }
}

/// The 5×7 glyph of `ch` (bit 4 is the leftmost column).
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' | '×' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        _ => [0; 7],
    }
}

/// CRC-32 (IEEE, as PNG chunks use it).
pub fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |mut crc, &b| {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
        crc
    })
}

/// Adler-32 (zlib's checksum).
pub fn adler32(bytes: &[u8]) -> u32 {
    let (a, b) = bytes.iter().fold((1u32, 0u32), |(a, b), &x| {
        let a = (a + u32::from(x)) % 65_521;
        (a, (b + a) % 65_521)
    });
    (b << 16) | a
}

/// Writes bits least-significant first, as deflate wants.
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn new() -> Self {
        BitWriter {
            out: Vec::new(),
            acc: 0,
            n: 0,
        }
    }

    /// The low `count` bits of `value`, least significant first.
    fn bits(&mut self, value: u32, count: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code: `count` bits, most significant first.
    fn code(&mut self, code: u32, count: u32) {
        let reversed = code.reverse_bits() >> (32 - count);
        self.bits(reversed, count);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// Deflate's fixed-Huffman code of literal/length symbol `sym` (0..=287).
fn fixed_code(w: &mut BitWriter, sym: u32) {
    match sym {
        0..=143 => w.code(0x30 + sym, 8),
        144..=255 => w.code(0x190 + sym - 144, 9),
        256..=279 => w.code(sym - 256, 7),
        _ => w.code(0xC0 + sym - 280, 8),
    }
}

const LENGTH_BASE: [u32; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];

/// A match of `len` (3..=258) bytes at distance 1.
fn run_match(w: &mut BitWriter, len: u32) {
    let i = LENGTH_BASE.iter().rposition(|&b| b <= len).unwrap_or(0);
    fixed_code(w, 257 + i as u32);
    w.bits(len - LENGTH_BASE[i], LENGTH_EXTRA[i]);
    w.code(0, 5); // distance code 0: distance 1
}

/// zlib stream of `data`: one fixed-Huffman block, runs of a repeated byte as matches at
/// distance 1, everything else as literals.
pub fn zlib(data: &[u8]) -> Vec<u8> {
    let mut w = BitWriter::new();
    w.bits(1, 1); // BFINAL
    w.bits(1, 2); // BTYPE = 01, fixed Huffman
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        fixed_code(&mut w, u32::from(b));
        let run = data[i + 1..].iter().take_while(|&&x| x == b).count();
        let mut left = run as u32;
        while left >= 3 {
            // Never leave 1 or 2 bytes behind a 258-byte match when they could join it.
            let len = if left > 258 && left - 258 < 3 {
                left - 3
            } else {
                left.min(258)
            };
            run_match(&mut w, len);
            left -= len;
        }
        for _ in 0..left {
            fixed_code(&mut w, u32::from(b));
        }
        i += 1 + run;
    }
    fixed_code(&mut w, 256);
    let mut out = vec![0x78, 0x01];
    out.extend(w.finish());
    out.extend(adler32(data).to_be_bytes());
    out
}

/// A PNG of `width × height` palette indexes (8 bits each) with `palette` (≤ 256 colours).
pub fn encode_png(width: u32, height: u32, palette: &[[u8; 3]], pixels: &[u8]) -> Vec<u8> {
    assert_eq!(pixels.len(), (width * height) as usize, "pixel count");
    assert!(!palette.is_empty() && palette.len() <= 256, "palette size");
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 3, 0, 0, 0]); // 8-bit, palette, deflate, adaptive filters, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"PLTE", &palette.concat());
    // Filter "Up" (2) on every row: identical rows become zeros, which compress to runs.
    let w = width as usize;
    let mut raw = Vec::with_capacity((w + 1) * height as usize);
    for y in 0..height as usize {
        raw.push(2);
        let row = &pixels[y * w..(y + 1) * w];
        if y == 0 {
            raw.extend(row);
        } else {
            let prev = &pixels[(y - 1) * w..y * w];
            raw.extend(row.iter().zip(prev).map(|(a, b)| a.wrapping_sub(*b)));
        }
    }
    chunk(b"IDAT", &zlib(&raw));
    chunk(b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(adler32(b""), 1);
    }

    #[test]
    fn zlib_matches_reference_encodings() {
        // Python's zlib.compress(b"") and (b"a") also use one fixed-Huffman block.
        assert_eq!(zlib(b""), [0x78, 0x01, 0x03, 0x00, 0, 0, 0, 1]);
        assert_eq!(zlib(b"a")[2..5], [0x4B, 0x04, 0x00]);
        // 'a' then one match of 99 at distance 1 (symbol 279, extra bits 0000, distance code
        // 0); checked with Python's zlib.decompress.
        let hundred = zlib(&[b'a'; 100]);
        assert_eq!(
            hundred[2..hundred.len() - 4],
            [0x4B, 0xA4, 0x03, 0x00, 0x00]
        );
        assert_eq!(
            hundred[hundred.len() - 4..],
            adler32(&[b'a'; 100]).to_be_bytes()
        );
    }

    #[test]
    fn long_runs_split_into_legal_matches() {
        // Runs of every length near the 258 limit must never leave a 1- or 2-byte match.
        for n in [1, 2, 3, 4, 258, 259, 260, 261, 262, 517, 518, 1000] {
            let data = vec![7u8; n];
            let z = zlib(&data);
            assert!(z.len() < 16 + n / 20, "run of {n} compresses");
        }
    }

    #[test]
    fn png_structure() {
        let png = encode_png(3, 2, &[[0, 0, 0], [255, 0, 0]], &[0, 1, 0, 1, 1, 1]);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[16..20], &3u32.to_be_bytes());
        assert_eq!(&png[20..24], &2u32.to_be_bytes());
        assert_eq!(&png[24..29], &[8, 3, 0, 0, 0]);
        assert_eq!(&png[png.len() - 12..], b"\0\0\0\0IEND\xAE\x42\x60\x82");
        // Every chunk's CRC is right.
        let mut at = 8;
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let body = &png[at + 4..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc32(body), crc);
            at += 12 + len;
        }
        assert_eq!(at, png.len());
    }

    fn chart() -> Chart {
        let s = |label: &str, values: &[f64]| BarSeries {
            label: label.into(),
            color: [1, 2, 3],
            values: values.to_vec(),
        };
        Chart {
            title: "t".into(),
            unit: "GBIT/S".into(),
            groups: vec!["P1".into(), "P4".into()],
            series: vec![
                s("a", &[10.0, 20.0]),
                s("b", &[5.0, f64::NAN]),
                s("c", &[18.4, 0.0]),
            ],
        }
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(20.0, 6), 5.0);
        assert_eq!(nice_step(18.4, 6), 5.0);
        assert_eq!(nice_step(6.0, 6), 1.0);
        assert_eq!(nice_step(0.9, 6), 0.2);
        assert_eq!(nice_step(0.0, 6), 1.0);
        assert_eq!(nice_step(f64::NAN, 6), 1.0);
    }

    #[test]
    fn bars_are_proportional_and_do_not_overlap() {
        let l = layout(&chart());
        assert_eq!(l.axis_max, 20.0);
        assert_eq!(l.ticks, [0.0, 5.0, 10.0, 15.0, 20.0]);
        assert_eq!(l.bars.len(), 6);
        let bottom = l.plot.y + l.plot.h;
        for b in &l.bars {
            assert_eq!(b.rect.y + b.rect.h, bottom, "bars stand on the axis");
            assert!(b.rect.x >= l.plot.x && b.rect.x + b.rect.w <= l.plot.x + l.plot.w);
        }
        // The tallest bar reaches the top; the others are in proportion.
        let p4a = l
            .bars
            .iter()
            .find(|b| b.group == 1 && b.series == 0)
            .unwrap();
        assert_eq!(p4a.rect.h, l.plot.h);
        let p1a = l
            .bars
            .iter()
            .find(|b| b.group == 0 && b.series == 0)
            .unwrap();
        assert_eq!(p1a.rect.h, l.plot.h / 2);
        // NaN and zero give no bar.
        assert_eq!(l.bars[4].rect.h, 0);
        assert_eq!(l.bars[5].rect.h, 0);
        // Left to right, no overlap, inside the group's span.
        for w in l.bars.windows(2) {
            assert!(w[0].rect.x + w[0].rect.w <= w[1].rect.x);
        }
        for b in &l.bars {
            let g = l.groups[b.group];
            assert!(b.rect.x >= g.x && b.rect.x + b.rect.w <= g.x + g.w);
        }
        assert!(l.legend.0 > l.plot.x + l.plot.w);
    }

    #[test]
    fn empty_chart_still_has_an_axis() {
        let mut c = chart();
        c.series.iter_mut().for_each(|s| s.values = vec![0.0, 0.0]);
        let l = layout(&c);
        assert_eq!(l.axis_max, 1.0);
        assert!(l.bars.iter().all(|b| b.rect.h == 0));
    }

    #[test]
    fn text_and_labels() {
        assert_eq!(value_label(3.24), "3.2");
        assert_eq!(value_label(123.4), "123");
        assert_eq!(value_label(f64::NAN), "N/A");
        assert_eq!(tick_label(15.0, 5.0), "15");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(0.05, 0.05), "0.05");
        assert_eq!(Canvas::text_width("AB", 2), 22);
        let mut c = Canvas::new(20, 10);
        c.text(0, 0, 1, 5, "l"); // lower case draws as upper case: L's left column
        assert_eq!(c.at(0, 0), 5);
        assert_eq!(c.at(4, 0), 0);
        assert_eq!(c.at(4, 6), 5);
        c.fill(
            Rect {
                x: 15,
                y: 8,
                w: 10,
                h: 10,
            },
            9,
        ); // clipped, no panic
        assert_eq!(c.at(19, 9), 9);
    }

    #[test]
    fn renders_a_png() {
        let png = render_png(&chart());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() < 60_000, "{} bytes", png.len());
    }
}
