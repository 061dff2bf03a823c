#!/usr/bin/env bash
# Regenerates the bundled sample audio from text with espeak-ng and sox (synthetic voices, no real
# people). Output is committed; run this only to change it:  clients/samples/make_samples.sh
#   call_stereo_8k.wav   8 kHz PCM16 stereo, left = customer, right = agent, ~17 s:
#                        agent greets (0.3 s), customer complains at length (~11 s), agent answers.
#   customer_16k.wav     16 kHz PCM16 mono, one customer utterance, ~4 s.
#   call_stereo_8k.transcript.json   what the call's voices say, dated by timings.json.
set -euo pipefail
cd "$(dirname "$0")"
command -v espeak-ng >/dev/null && command -v sox >/dev/null || { echo "needs espeak-ng and sox (apt-get install espeak-ng sox)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

say() {  # say VOICE WPM OUT TEXT -> mono 8 kHz PCM16
  espeak-ng -v "$1" -s "$2" -w "$tmp/raw.wav" "$4"
  sox "$tmp/raw.wav" -r 8000 -c 1 -b 16 "$3" norm -3
}
silence() { sox -n -r 8000 -c 1 -b 16 "$2" trim 0 "$1"; }

say en-us+f3 165 "$tmp/agent1.wav" "Thank you for calling Acme support, this is Dana. How can I help you today?"
say en-us+m3 185 "$tmp/cust1.wav" "I have called you three times this week and nobody has fixed my internet. This is completely unacceptable. I want it fixed today or I am cancelling my account."
say en-us+f3 165 "$tmp/agent2.wav" "I am really sorry about that. Let me look at your account right now."

a1=$(soxi -D "$tmp/agent1.wav"); c1=$(soxi -D "$tmp/cust1.wav")
cust_start=$(python3 -c "print(round(0.3 + $a1 + 0.7, 2))")
agent2_start=$(python3 -c "print(round($cust_start + $c1 + 0.5, 2))")
silence 0.3 "$tmp/lead_a.wav"
silence "$cust_start" "$tmp/lead_c.wav"
gap=$(python3 -c "print(round($agent2_start - 0.3 - $a1, 2))")
silence "$gap" "$tmp/gap_a.wav"
silence 1.0 "$tmp/tail.wav"
sox "$tmp/lead_a.wav" "$tmp/agent1.wav" "$tmp/gap_a.wav" "$tmp/agent2.wav" "$tmp/tail.wav" "$tmp/agent_track.wav"
sox "$tmp/lead_c.wav" "$tmp/cust1.wav" "$tmp/tail.wav" "$tmp/cust_track.wav"
len=$(soxi -D "$tmp/agent_track.wav")
sox "$tmp/cust_track.wav" "$tmp/cust_padded.wav" pad 0 "$(python3 -c "print(max(0, $len - $(soxi -D "$tmp/cust_track.wav")))")"
sox -M "$tmp/cust_padded.wav" "$tmp/agent_track.wav" -b 16 call_stereo_8k.wav trim 0 "$len"

espeak-ng -v en-us+m3 -s 185 -w "$tmp/raw16.wav" "Nobody has fixed my internet and I have waited all week for a call back."
sox "$tmp/raw16.wav" -r 16000 -c 1 -b 16 customer_16k.wav norm -3

cat > timings.json <<JSON
{"call_stereo_8k.wav": {"channels": ["customer", "agent"], "agent_speech": [[0.3, $(python3 -c "print(round(0.3+$a1,2))")], [$agent2_start, $(python3 -c "print(round($agent2_start+$(soxi -D "$tmp/agent2.wav"),2))")]], "customer_speech": [[$cust_start, $(python3 -c "print(round($cust_start+$c1,2))")]]}}
JSON
# The call's transcript: exactly the text spoken, one segment per utterance (for speech_rate_cpm).
python3 - <<'PY'
import json
timings = json.load(open("timings.json"))["call_stereo_8k.wav"]
texts = {
    "agent": ["Thank you for calling Acme support, this is Dana. How can I help you today?",
              "I am really sorry about that. Let me look at your account right now."],
    "customer": ["I have called you three times this week and nobody has fixed my internet. This is completely "
                 "unacceptable. I want it fixed today or I am cancelling my account."],
}
segments = sorted(({"speaker": role, "start_ms": round(start * 1000), "end_ms": round(end * 1000), "text": text}
                   for role in texts for (start, end), text in zip(timings[f"{role}_speech"], texts[role])),
                  key=lambda s: s["end_ms"])
open("call_stereo_8k.transcript.json", "w").write(json.dumps(segments, indent=1) + "\n")
PY
soxi call_stereo_8k.wav customer_16k.wav | grep -E "Input File|Channels|Sample Rate|Duration"
cat timings.json
