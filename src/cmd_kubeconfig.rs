//! `flotilla kubeconfig`: issues a client certificate for a person from the
//! cluster CA and prints a kubeconfig for it. It runs on a server member
//! (the CA's key is in its data directory) and talks to no server.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Args)]
pub struct KubeconfigArgs {
    /// The user name the certificate carries (its CN).
    #[arg(long)]
    user: String,
    /// The user's group (its O); a certificate carries at most one.
    #[arg(long)]
    group: Option<String>,
    /// How long the certificate is valid: a number with s, m, h or d.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// A server member's data directory, where the cluster CA is.
    #[arg(long, default_value = "./flotilla-data")]
    data_dir: PathBuf,
    /// The API URL to put in the kubeconfig (default: the one of this
    /// member's admin kubeconfig).
    #[arg(long = "api-url")]
    api_url: Option<String>,
    /// Write here (owner-only) instead of printing.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
}

/// `90s`, `15m`, `24h`, `30d`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("--ttl {text:?}: expected a number and a unit, such as 24h"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" | "" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("--ttl {text:?}: the unit must be s, m, h or d")),
    };
    secs.map(Duration::from_secs).ok_or_else(|| format!("--ttl {text:?} is too long"))
}

pub fn run(args: KubeconfigArgs) -> Result<i32, String> {
    let ttl = parse_ttl(&args.ttl)?;
    let dir = flotilla_raft::data_dir::DataDir::new(&args.data_dir);
    let member = dir.read_member().map_err(|e| format!("{e}; run this where a server member keeps its data (--data-dir)"))?;
    let ca = dir.read_ca(&member.cluster_id).map_err(|e| format!("{e}; only server members hold the cluster CA's key"))?;
    let url = match args.api_url {
        Some(u) => u,
        None => {
            let admin = args.data_dir.join(crate::kubeconfig::ADMIN_KUBECONFIG);
            let text = std::fs::read_to_string(&admin).map_err(|e| format!("{}: {e}; pass --api-url", admin.display()))?;
            crate::kubeconfig::parse(&text, &args.data_dir, &admin.display().to_string())?
                .server
                .ok_or_else(|| format!("{} names no server; pass --api-url", admin.display()))?
        }
    };
    let id = ca.issue_client(&args.user, args.group.as_deref(), ttl).map_err(|e| e.to_string())?;
    let text = crate::kubeconfig::render("flotilla", &url, &ca.cert_pem, &args.user, &id.cert_pem, &id.key_pem);
    match args.output {
        Some(path) => {
            crate::kubeconfig::write_private(&path, &text)?;
            eprintln!("wrote {} for user {:?} (valid {:?})", path.display(), args.user, ttl);
        }
        None => print!("{text}"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_and_bad_ones_say_why() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("h").unwrap_err().contains("expected a number"));
        assert!(parse_ttl("5y").unwrap_err().contains("unit"));
        assert!(parse_ttl("99999999999999999999d").is_err());
        assert!(parse_ttl("18446744073709551615d").unwrap_err().contains("too long"));
    }
}
