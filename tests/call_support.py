"""What the browser tests of calls that outlive their server share: watching the remote
video for stalls, and reading and writing the chat."""

from __future__ import annotations

from typing import Any

STALL_LIMIT_S = 1.0

# Samples the remote video's currentTime every 100 ms, with the page's clock.
SAMPLER_JS = """() => {
  const video = document.querySelector('[data-testid="remote-video"]');
  window.__videoSamples = [];
  window.__videoSampler = setInterval(() => {
    window.__videoSamples.push([performance.now(), video.currentTime]);
  }, 100);
}"""

# The longest stretch, in seconds, over which currentTime did not move.
LONGEST_STALL_JS = """() => {
  const samples = window.__videoSamples;
  let longest = 0, since = samples[0][0];
  for (let i = 1; i < samples.length; i++) {
    if (samples[i][1] > samples[i - 1][1]) since = samples[i][0];
    longest = Math.max(longest, samples[i][0] - since);
  }
  return { longest: longest / 1000, samples: samples.length };
}"""

LINES = """(who) => [...document.querySelectorAll('[data-testid=chat-log] > li.msg-' + who)]
  .map((li) => [li.querySelector('.msg-text').textContent, li.dataset.delivery ?? null])"""


def say(person: Any, text: str) -> None:
    person.testid("chat-input").fill(text)
    person.testid("chat-input").press("Enter")


def heard(person: Any, text: str, timeout_ms: int = 15_000) -> None:
    person.wait(
        "(t) => [...document.querySelectorAll("
        "'[data-testid=chat-log] > li.msg-stranger .msg-text')].some((e) => e.textContent === t)",
        text,
        timeout_ms,
    )
