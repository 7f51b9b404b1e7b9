"""When the model's output is unusable, the bot says it cannot tell instead of inventing.

The scripted model answers four sample photos the ways a model fails: nothing, a loop, a denial
that it can see the photo, and text that is not about skin.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from skingpt import report
from skingpt.replies import DISCLAIMER
from skingpt.safety import Abstention
from tests.e2e.support import DATA, Services, agree, containing, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def services(start_services: Callable[..., Services]) -> Services:
    return start_services(
        ["--allow-scripted-model"],
        model="scripted",
        script=str(DATA / "scripted" / "abstain.toml"),
        allow_scripted_model="true",
    )


@pytest.mark.parametrize(
    ("photo", "reason"),
    [
        ("psoriasis_01.jpg", Abstention.EMPTY),
        ("eczema_02.jpg", Abstention.REPETITIVE),
        ("tinea_corporis_01.jpg", Abstention.NO_IMAGE),
        ("nevus_01.jpg", Abstention.OFF_TOPIC),
    ],
)
def test_unusable_model_output_gets_a_cannot_tell_reply_with_next_steps(
    services: Services, photo: str, reason: Abstention
) -> None:
    user = 20_000 + len(photo)
    api = services.api
    agree(api, user)
    api.send_photo(user, (DATA / photo).read_bytes())
    text = wait_for(api, user, containing(DISCLAIMER), timeout=90)["text"]
    assert report.CANNOT_TELL[reason] in text
    assert report.NEXT_STEPS in text
    assert report.SEES not in text and report.DO_NOW not in text
    (job,) = services.jobs(user)
    # An unusable description ends the analysis: no further model calls build on it.
    assert list(json.loads(job["answers"])) == ["describe"]


def test_a_red_flag_in_the_persons_words_still_leads_when_the_model_fails(
    services: Services,
) -> None:
    api, user = services.api, 20_100
    agree(api, user)
    api.send_photo(
        user,
        (DATA / "psoriasis_01.jpg").read_bytes(),
        caption="My baby has a fever and this rash, and is very sleepy",
    )
    text = wait_for(api, user, containing(DISCLAIMER), timeout=90)["text"]
    heading = next(h for h in report.URGENT_HEADING.values() if h in text)
    assert text.index(heading) < text.index(report.CANNOT_TELL[Abstention.EMPTY])
