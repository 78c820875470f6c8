#!/usr/bin/python3
"""metrics_check.py - parses a Prometheus text exposition with the official client's parser
(Debian's python3-prometheus-client) and prints what it found as JSON, for tests/test_metrics.c.

    metrics_check.py FILE            parse FILE ("-": stdin)
    metrics_check.py --url URL       GET URL (10 s timeout) and parse the body

Output: {"status": 200, "content_type": "...", "families": {name: type},
         "samples": [[name, {labels}, value], ...]}.
Exit 1 (with the reason on stderr) when the text does not parse, a family lacks HELP or TYPE,
a counter's sample does not end in _total, or a sample lacks the instance label."""
import json
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    status, ctype = None, None
    if len(sys.argv) == 3 and sys.argv[1] == "--url":
        try:
            with urllib.request.urlopen(sys.argv[2], timeout=10) as r:
                status, ctype, text = r.status, r.headers.get("Content-Type"), r.read().decode()
        except urllib.error.HTTPError as e:
            print(json.dumps({"status": e.code, "body": e.read().decode(errors="replace")}))
            return 0
    elif len(sys.argv) == 2:
        text = sys.stdin.read() if sys.argv[1] == "-" else open(sys.argv[1]).read()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    families, samples = {}, []
    typed = {l.split()[2] for l in text.splitlines() if l.startswith("# TYPE ")}
    helped = {l.split()[2] for l in text.splitlines() if l.startswith("# HELP ")}
    try:
        for f in text_string_to_metric_families(text):
            families[f.name] = f.type
            for s in f.samples:
                if "instance" not in s.labels:
                    raise ValueError("sample without instance label: %s" % (s.name,))
                if f.type == "counter" and not s.name.endswith("_total"):
                    raise ValueError("counter sample not ending in _total: %s" % s.name)
                samples.append([s.name, s.labels, s.value])
    except Exception as e:  # the parser raises ValueError and others on bad text
        print("metrics_check: does not parse: %s" % e, file=sys.stderr)
        return 1
    for name in families:
        want = name + "_total" if families[name] == "counter" else name
        if want not in typed and name not in typed:
            print("metrics_check: %s has no TYPE line" % name, file=sys.stderr)
            return 1
        if want not in helped and name not in helped:
            print("metrics_check: %s has no HELP line" % name, file=sys.stderr)
            return 1
    print(json.dumps({"status": status, "content_type": ctype, "families": families,
                      "samples": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
