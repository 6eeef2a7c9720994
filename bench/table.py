"""bench/run's table: medians of each figure, ratios measured in the same run, and the goals of issue 7.

A ratio is the median of the rounds' own ratios (each round measures both sides back to back),
not the ratio of the two medians: the machine's speed moves between rounds, and a pair measured
together moves with it.

python3 bench/table.py RESULTS_FILE "MACHINE LINE" ROUNDS
"""
import statistics
import sys
from collections import defaultdict

values = defaultdict(list)
for line in open(sys.argv[1]):
    key, _, value = line.strip().partition("=")
    if value:
        values[key].append(float(value))
machine, rounds = sys.argv[2], sys.argv[3]


def med(key):
    v = values.get(key)
    return statistics.median(v) if v else None


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def paired(ka, kb):
    """The median of the per-round ratios of ka to kb (the ratio of medians if they do not pair)."""
    a, b = values.get(ka), values.get(kb)
    if not a or not b or len(a) != len(b):
        return ratio(med(ka), med(kb))
    return statistics.median(x / y for x, y in zip(a, b) if y)


rows = []


def row(item, measure, upgate, other, r, goal, met, d=0):
    verdict = "–" if met is None else ("yes" if met else "**no**")
    r_text = "–" if r is None else f"{r:.2f}×"
    rows.append(f"| {item} | {measure} | {fmt(upgate, d)} | {other} | {r_text} | {goal} | {verdict} |")


def check(x, test):
    return None if x is None else test(x)


if "proxy_upgate_rps" in values:
    u, n = med("proxy_upgate_rps"), med("proxy_nginx_rps")
    r = paired("proxy_upgate_rps", "proxy_nginx_rps")
    row(1, "proxy req/s", u, f"nginx {fmt(n)}", r, "≥ 1.25×", check(r, lambda x: x >= 1.25))
    u, n = med("proxy_upgate_cpu"), med("proxy_nginx_cpu")
    if u is not None:
        row(1, "proxy CPU µs per request (server only)", u, f"nginx {fmt(n, 1)}",
            paired("proxy_upgate_cpu", "proxy_nginx_cpu"), "", None, 1)
    if "proxy_relay_rps" in values:
        r = paired("proxy_relay_rps", "proxy_nginx_rps")
        row(1, "ceiling: a relay doing no HTTP work, req/s", med("proxy_relay_rps"),
            f"nginx {fmt(med('proxy_nginx_rps'))}", r, "", None)
        row(1, "ceiling: relay CPU µs per request", med("proxy_relay_cpu"),
            f"nginx {fmt(med('proxy_nginx_cpu'), 1)}",
            paired("proxy_relay_cpu", "proxy_nginx_cpu"), "", None, 1)
    u, n = med("proxy_upgate_p99"), med("proxy_nginx_p99")
    r = paired("proxy_upgate_p99", "proxy_nginx_p99")
    row(1, "proxy p99 ms", u, f"nginx {fmt(n, 2)}", r, "≤ 1.00×", check(r, lambda x: x <= 1.0), 2)
if "upload_mbps" in values:
    u, d = med("upload_mbps"), med("dd_mbps")
    r = paired("upload_mbps", "dd_mbps")
    row(2, "1 GiB upload MB/s", u, f"dd fdatasync {fmt(d)}", r, "≥ 0.80×", check(r, lambda x: x >= 0.8))
    m = med("upload_rss")
    row(2, "peak RSS MiB", m, "", None, "≤ 32", check(m, lambda x: x <= 32), 1)
if "many_mbps" in values:
    acc = min(values["many_accepted"])
    row(3, "500×1 MiB accepted (worst round)", acc, "of 500", None, "all", acc == 500)
    row(3, "aggregate MB/s", med("many_mbps"), "", None, "", None)
    m = med("many_rss")
    row(3, "peak RSS MiB", m, "", None, "≤ 128", check(m, lambda x: x <= 128), 1)
if "files_nginx_rps" in values:
    n = med("files_nginx_rps")
    for who, route in (("files", "/files"), ("media", "/media")):
        u = med(f"files_{who}_rps")
        r = paired(f"files_{who}_rps", "files_nginx_rps")
        row(4, f"{route} 1 KiB req/s", u, f"nginx secure_link {fmt(n)}", r, "≥ 1.00×",
            check(r, lambda x: x >= 1.0))
    if "files_nginxnosym_rps" in values:
        n = med("files_nginxnosym_rps")
        row(4, "/media 1 KiB req/s, against nginx with the same symlink policy", med("files_media_rps"),
            f"nginx secure_link + disable_symlinks {fmt(n)}",
            paired("files_media_rps", "files_nginxnosym_rps"), "", None)
    for who, route in (("files", "/files"), ("media", "/media")):
        u, n = med(f"files_{who}_cpu"), med("files_nginx_cpu")
        if u is not None:
            row(4, f"{route} CPU µs per request", u, f"nginx {fmt(n, 1)}",
                paired(f"files_{who}_cpu", "files_nginx_cpu"), "", None, 1)
if "resolves" in values:
    v = med("resolves")
    row(5, "resolves/s, 1M handles, 1 thread (the proxy's: token)", v, "", None, "≥ 5,000,000",
        check(v, lambda x: x >= 5e6))
    s = med("session_resolves")
    if s is not None:
        row(5, "resolves/s with the limits (the upload routes')", s, "", None, "", None)
    lat, k = med("memory_latency"), med("latencies_per_resolve")
    if lat is not None:
        row(5, f"resolve time in cache-missing loads ({fmt(lat)} ns each now)", k, "", None, "", None, 1)
    b = med("bytes_per_handle")
    row(5, "bytes per handle", b, "", None, "≤ 256", check(b, lambda x: x <= 256))

print(f"Machine: {machine}; medians of {rounds} rounds")
print()
print("| # | measure | upgate | against | ratio | goal | met |")
print("|---|---|---:|---|---:|---|---|")
print("\n".join(rows))
