//! The speech dialects as the e2e tests and the demo drive them: fork-agent's
//! `[speech_server.protocol]` for each, the independent checker (tests/checkers) that plays its
//! server, and the WAV helpers to match what a checker decoded with what the parties sent.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{Host, Topology};

/// One dialect setting under test.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    /// `profile` in fork-agent's config (and the checker's name).
    pub profile: &'static str,
    /// Keys of `[speech_server.protocol]` besides `profile`.
    pub protocol: &'static str,
    /// `token` of the server entry (presented as the dialect's `auth` says), if any.
    pub token: Option<&'static str>,
    /// Checker switches for this setting.
    pub checker: &'static [&'static str],
    /// WAV track names of the caller and the callee in the checker's output.
    pub tracks: [&'static str; 2],
    /// Sample rate of the decoded tracks; 8 kHz G.711 and L16 compare sample-exact, 16 kHz by
    /// correlation.
    pub rate: u32,
}

/// Base64 of the AudioHook client secret the tests and the demo share with the checker.
pub const AUDIOHOOK_SECRET: &str = "c2VjcmV0LWtleS1mb3ItYXVkaW9ob29rLXRlc3Rz";

/// Twilio Media Streams.
pub const TWILIO: Dialect = Dialect {
    profile: "twilio",
    protocol: "",
    token: None,
    checker: &["--expect-tracks", "inbound,outbound", "--strict-sids"],
    tracks: ["inbound", "outbound"],
    rate: 8000,
};

/// Genesys AudioHook v2, stereo PCMU, signed upgrade.
pub const AUDIOHOOK: Dialect = Dialect {
    profile: "audiohook",
    protocol: "organization_id = \"d7934305-0972-4844-938e-9060eef73d05\"\nclient_secret = \"c2VjcmV0LWtleS1mb3ItYXVkaW9ob29rLXRlc3Rz\"\n",
    token: Some("ak-e2e"),
    checker: &[
        "--api-key",
        "ak-e2e",
        "--client-secret",
        AUDIOHOOK_SECRET,
        "--select-channels",
        "external,internal",
    ],
    tracks: ["external", "internal"],
    rate: 8000,
};

/// jambonz `listen`: metadata, then stereo L16 at 8 kHz.
pub const JAMBONZ: Dialect = Dialect {
    profile: "jambonz",
    protocol: "",
    token: None,
    checker: &[],
    tracks: ["caller", "callee"],
    rate: 8000,
};

/// Binary audio only: stereo µ-law at 8 kHz.
pub const RAW: Dialect = Dialect {
    profile: "raw",
    protocol: "",
    token: None,
    checker: &["--format", "ulaw", "--rate", "8000", "--channels", "2"],
    tracks: ["caller", "callee"],
    rate: 8000,
};

/// Binary audio only: stereo L16 resampled to 16 kHz.
pub const RAW_L16_16K: Dialect = Dialect {
    profile: "raw",
    protocol: "encoding = \"l16\"\nrate = 16000\n",
    token: None,
    checker: &["--format", "l16", "--rate", "16000", "--channels", "2"],
    tracks: ["caller", "callee"],
    rate: 16000,
};

/// The dialect a `--profile` name selects (the demo's choices).
pub fn by_name(name: &str) -> Option<Dialect> {
    [TWILIO, AUDIOHOOK, JAMBONZ, RAW]
        .into_iter()
        .find(|d| d.profile == name)
}

impl Dialect {
    /// The lines to append to a config that ends inside a `[[speech_server]]` table.
    pub fn server_toml(&self) -> String {
        let mut s = String::new();
        if let Some(t) = self.token {
            s.push_str(&format!("token = \"{t}\"\n"));
        }
        s.push_str(&format!(
            "[speech_server.protocol]\nprofile = \"{}\"\n{}",
            self.profile, self.protocol
        ));
        s
    }

    /// Starts this dialect's checker as `name` in the speech namespace on `listen`, writing its
    /// report and WAVs into `dir`, and waits (bounded) until it listens.
    pub fn spawn_checker(
        &self,
        topo: &mut Topology,
        name: &str,
        listen: &str,
        dir: &Path,
        extra: &[&str],
    ) -> Result<Checker> {
        let report = dir.join(format!("{name}-report.json"));
        let wavs = dir.join(format!("{name}-wav"));
        std::fs::create_dir_all(&wavs)?;
        let script = checkers_dir()?.join(format!("{}_checker.py", self.profile));
        let (script, report_s, wavs_s) = (
            script.to_string_lossy().into_owned(),
            report.to_string_lossy().into_owned(),
            wavs.to_string_lossy().into_owned(),
        );
        let mut args = vec![
            script.as_str(),
            "--listen",
            listen,
            "--report",
            &report_s,
            "--wav-dir",
            &wavs_s,
            "--max-duration-s",
            "300",
        ];
        args.extend_from_slice(self.checker);
        args.extend_from_slice(extra);
        topo.spawn(name, Host::Speech, Path::new("python3"), &args)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !topo.log(name).contains("listening") {
            if Instant::now() > deadline || !topo.is_running(name) {
                bail!("{name} did not start:\n{}", topo.log(name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Checker { report, wavs })
    }
}

/// A running checker's output files.
#[derive(Debug, Clone)]
pub struct Checker {
    /// Its JSON report (rewritten on every close and on exit).
    pub report: PathBuf,
    /// Its WAV directory: `c<N>-<track>.wav` per connection N.
    pub wavs: PathBuf,
}

impl Checker {
    /// The report as it is now (`Null` before the first write).
    pub fn read_report(&self) -> serde_json::Value {
        std::fs::read(&self.report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits (bounded) until every connection the checker accepted has closed.
    pub fn wait_closed(&self, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.read_report();
            let closed = r["per_connection"]
                .as_array()
                .is_some_and(|c| !c.is_empty() && c.iter().all(|c| !c["close"].is_null()));
            if closed {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("the checker saw no close within {timeout:?}: {r}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The WAV of `track` on connection `conn` (1-based).
    pub fn wav(&self, conn: u32, track: &str) -> PathBuf {
        self.wavs.join(format!("c{conn}-{track}.wav"))
    }
}

/// tests/checkers in the source tree.
pub fn checkers_dir() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join("tests/checkers"))
}

/// Writes the µ-law bytes a party sent as a 16-bit PCM mono 8 kHz WAV (what compare.py reads).
pub fn write_ulaw_as_wav(path: &Path, ulaw: &[u8]) -> Result<()> {
    write_decoded_wav(path, ulaw, speech_proto::ulaw_to_linear)
}

/// Writes the A-law bytes a party received as a 16-bit PCM mono 8 kHz WAV.
pub fn write_alaw_as_wav(path: &Path, alaw: &[u8]) -> Result<()> {
    write_decoded_wav(path, alaw, speech_proto::alaw_to_linear)
}

fn write_decoded_wav(path: &Path, g711: &[u8], decode: fn(u8) -> i16) -> Result<()> {
    let linear: Vec<i16> = g711.iter().map(|&b| decode(b)).collect();
    write_linear_wav(path, &linear)
}

/// Writes 16-bit linear samples as a PCM mono 8 kHz WAV.
pub fn write_linear_wav(path: &Path, samples: &[i16]) -> Result<()> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut f = std::fs::File::create(path)?;
    f.write_all(b"RIFF")?;
    f.write_all(&(36 + data.len() as u32).to_le_bytes())?;
    f.write_all(b"WAVEfmt ")?;
    f.write_all(&16u32.to_le_bytes())?;
    f.write_all(&1u16.to_le_bytes())?; // PCM
    f.write_all(&1u16.to_le_bytes())?; // mono
    f.write_all(&8000u32.to_le_bytes())?;
    f.write_all(&16000u32.to_le_bytes())?; // byte rate
    f.write_all(&2u16.to_le_bytes())?; // block align
    f.write_all(&16u16.to_le_bytes())?;
    f.write_all(b"data")?;
    f.write_all(&(data.len() as u32).to_le_bytes())?;
    f.write_all(&data)?;
    Ok(())
}

/// compare.py: `decoded` against `source` (sample-exact at 8 kHz, correlation ≥ 0.99 at other
/// rates). The error carries compare.py's explanation.
pub fn compare(rate: u32, decoded: &Path, source: &Path) -> Result<String> {
    if rate == 8000 {
        run_compare(decoded, source, &["--mode", "exact"])
    } else {
        run_compare(decoded, source, &["--mode", "corr", "--threshold", "0.99"])
    }
}

/// `decoded` is `source` passed through G.711 `law` (`ulaw` or `alaw`), sample for sample at
/// some alignment (compare.py exact with `--quantize`).
pub fn compare_through(law: &str, decoded: &Path, source: &Path) -> Result<String> {
    run_compare(decoded, source, &["--mode", "exact", "--quantize", law])
}

fn run_compare(decoded: &Path, source: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("python3")
        .arg(checkers_dir()?.join("compare.py"))
        .arg(decoded)
        .arg(source)
        .args(args)
        .output()
        .context("running compare.py")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "{} does not match {}: {text}",
            decoded.display(),
            source.display()
        );
    }
    Ok(text.trim().to_owned())
}
