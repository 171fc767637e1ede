"""The browser page (``/demo/``) in headless Chromium with a fake microphone fed from a WAV:
page -> gateway media leg -> Redis -> worker -> OpenAI client -> OpenAI simulator, with the
backend (``voicegrid.browser_demo``'s tool answering) on its own client. Asserts on what the page
shows and saves a screenshot under the test's tmp dir.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them): skipped with a
reason outside CI when they are missing, failed in CI.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingress import mint_media_token
from providers.simulator import OpenAISimulator, SimScript, ToolCallScript
from voicegrid.browser_demo import _answer_tools
from voicegrid.demo import demo_config

from ...support.timing import scaled

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SECRET = "b" * 48

pytestmark = pytest.mark.timeout(180)


def _need_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install chromium and chromium-driver; missing {missing}")
        pytest.skip(f"{missing} not installed (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium")


def _speech_wav(path: Path) -> None:
    """1 s of a loud tone (speech to the simulator's VAD) then 2 s of silence, 48 kHz mono."""
    rate = 48000
    t = np.arange(rate) / rate
    tone = (9000 * np.sin(2 * np.pi * 220 * t)).astype("<i2")
    audio = np.concatenate([tone, np.zeros(rate * 2, dtype="<i2")])
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(audio.tobytes())


def _driver(wav: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,800",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(arg)
    # the driver binary is given: selenium-manager never looks for (or downloads) one
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


async def _until(driver: Any, element_id: str, needle: str, within: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(within)
    while True:
        text = await asyncio.to_thread(_text, driver, element_id)
        if needle in text:
            return text
        if loop.time() > deadline:
            log = await asyncio.to_thread(_text, driver, "log")
            raise AssertionError(f"#{element_id} never showed {needle!r}: {text!r}; log: {log}")
        await asyncio.sleep(0.2)


async def test_the_page_talks_hears_and_shows_the_tool_call(
    start_worker: Any, start_gateway: Any, make_client: Any, tmp_path: Path
) -> None:
    _need_chromium()
    script = SimScript(
        reply_text="It is eighteen degrees in Paris.",
        user_transcript="What is the weather in Paris?",
        tool_call=ToolCallScript(name="get_weather", arguments={"city": "Paris"}, on_turn=1),
        speed=0,
    )
    wav = tmp_path / "caller.wav"
    _speech_wav(wav)
    async with OpenAISimulator(script) as sim:
        await start_worker(openai_url=sim.url, openai_api_key="sk-simulated")
        gw = await start_gateway(media_token_secret=SECRET)
        backend = make_client(provider="openai", model="gpt-realtime")
        _answer_tools(backend)  # the demo's backend: it answers the tool calls, not the page
        await backend.connect(demo_config())
        token = mint_media_token(SECRET, str(backend.session_id))
        url = f"http://127.0.0.1:{gw.gateway.port}/demo/#session={backend.session_id}&token={token}"
        driver = await asyncio.to_thread(_driver, wav)
        try:
            await asyncio.to_thread(driver.get, url)
            from selenium.webdriver.common.by import By

            button = await asyncio.to_thread(driver.find_element, By.ID, "start")
            await asyncio.to_thread(button.click)
            await _until(driver, "status", "live", 20)
            await _until(driver, "log", "attached to session", 5)
            tools = await _until(driver, "tools", "get_weather", 30)
            assert '{"city":"Paris"}' in tools
            transcript = await _until(driver, "transcript", "temperature_c", 30)
            assert "You: What is the weather in Paris?" in transcript
            assert "Agent:" in transcript
            meter = await _until(driver, "meter", "received", 5)
            await _until(driver, "meter", "s of audio", 5)
            received = float(meter.split("received ")[1].split(" s")[0])
            for _ in range(50):
                if received > 0:
                    break
                await asyncio.sleep(0.2)
                meter = await asyncio.to_thread(_text, driver, "meter")
                received = float(meter.split("received ")[1].split(" s")[0])
            assert received > 0, meter  # model audio reached the page's player
            shot = tmp_path / "browser-page.png"
            await asyncio.to_thread(driver.save_screenshot, str(shot))
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 10_000
        finally:
            await asyncio.to_thread(driver.quit)
            await backend.disconnect()
