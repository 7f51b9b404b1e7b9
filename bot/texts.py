"""What the bot says outside of answers, marked for the catalogs and translated when sent.

Texts are plain (the sender escapes them when a reply is HTML); ``{names}`` are filled in after
translation.
"""

from __future__ import annotations

from collections.abc import Sequence

from skingpt.i18n import N_, Translate
from skingpt.quality import QualityIssue

START = N_(
    "Hello. I look at photos of skin problems and describe what I see: what it might be, what "
    "you can do now, and when to see a health worker.\n\n"
    "How to use me: send a clear photo of the skin (as a photo or as a file), close up, in good "
    "light. You can add a question as the caption, and send several photos of the same problem "
    "together as an album. Then ask follow-up questions by writing a message.\n\n"
    "What I am not: I am not a doctor, I cannot examine you, and I can be wrong. I never "
    "replace a visit to a clinic. In an emergency, call your local emergency number."
)

CONSENT = N_(
    "Before I look at any photo, please agree to this: your photos, questions and my answers are "
    "kept on this service's own computers only, for at most {hours} hours, to answer you, and "
    "then deleted; /forget deletes them at once. Nobody else sees them. My answers are not a "
    "diagnosis."
)
CONSENT_GROUP = N_("In this group, everyone in it sees the photos you send and my answers to you.")
AGREE = N_("I agree")
CONSENT_FIRST = N_(
    "I have not looked at your photo: first please read the note above and tap “I agree”, then "
    "send the photo again."
)
THANKS_FOR_CONSENT = N_("Thank you. Send a photo of the skin problem whenever you are ready.")
ALREADY_AGREED = N_("You have already agreed. Send a photo of the skin problem whenever you like.")

HELP = N_(
    "Send a photo of the skin problem: close up, in daylight, in focus. Add a question as the "
    "caption if you like; several photos sent together as an album are one case. After my "
    "answer, write any follow-up question about the same case.\n\n"
    "/new starts a new case (a new skin problem)\n"
    "/language changes the language\n"
    "/mode switches between patient and health worker mode\n"
    "/referral writes a summary to show a clinic (health worker mode)\n"
    "/about says which model answers and where your data goes\n"
    "/forget deletes your photos, questions and answers at once"
)

ABOUT = N_(
    "Model: {model}. It is SkinGPT-4 style software: a vision-language model that describes skin "
    "photos. It was trained mostly on photos of lighter skin (Fitzpatrick types I–IV), so it can "
    "be less accurate on darker skin. It can be wrong, cannot examine you, and does not know "
    "your history.\n\n"
    "Where your data goes: photos, questions and answers stay on this service's own computers; "
    "nothing is sent to other companies. They are deleted {hours} hours after your last message, "
    "or at once with /forget. {encryption}\n\n"
    "Some parts of each answer come from the model (what it sees, possible conditions, what to "
    "do); others come from fixed safety rules (urgent-care advice, when to see a health worker, "
    "and this warning: no medicine doses)."
)
ENCRYPTED = N_("Photos are stored encrypted.")
NOT_ENCRYPTED = N_("Photos are not encrypted on this service's disk.")

CHOOSE_LANGUAGE = N_("Choose your language:")
LANGUAGE_SET = N_("I will write in English from now on.")

CHOOSE_MODE = N_(
    "Who is using this chat? In health worker mode every case gets a case number and /referral "
    "writes a summary to forward to a clinic."
)
PATIENT = N_("Patient or family")
HEALTH_WORKER = N_("Community health worker")
MODE_PATIENT = N_("Patient mode is on.")
MODE_HEALTH_WORKER = N_(
    "Health worker mode is on: each case gets a case number; /referral writes its summary."
)

NEW_CASE = N_("OK. Your next photo starts a new case.")
STORE_FULL = N_(
    "I cannot take new photos right now: the service is full. Answers to photos you already sent "
    "still come. Please try again in an hour."
)
NEW_CASE_CANCELLED = N_(
    "OK. Your next photo starts a new case. The answer I was still preparing about the previous "
    "photo is cancelled."
)
NO_OPEN_CASE = N_("There is no open case. Send a photo to start one.")

SAME_PROBLEM = N_(
    "You already have an open case. Is this photo of the same skin problem, or a new one?"
)
SAME = N_("Same problem")
DIFFERENT = N_("A new problem")
ADDED_TO_CASE = N_("Added to your case. I will look at the new photo with what we said before.")

QUEUED = N_("Photo received. You are number {place} in line.")
QUEUED_QUESTION = N_("Question received. You are number {place} in line.")
ESTIMATE = N_("Estimated wait: about {minutes} min.")
NO_ESTIMATE = N_("I will reply as soon as it is ready.")
WORKING = N_("Looking at your photo now (step {step} of {steps})…")
WORKING_ON_QUESTION = N_("Working on your question now…")
ALBUM_RECEIVED = N_("I received {count} photos as one case and will look at the clearest one.")

TOO_MANY_WAITING = N_(
    "You already have {count} questions or photos waiting for an answer. Please wait for those "
    "answers, then send this again."
)

SEND_PHOTO_FIRST = N_(
    "Please send a photo of the skin first. Then you can ask questions about it."
)

UNSUPPORTED = N_(
    "I can only read photos of skin and text messages. Please send a photo of the skin, or "
    "write your question."
)

FORGOTTEN = N_(
    "Done: I deleted your photos, questions, answers and settings. A photo still being analysed "
    "will not be answered. Send /start whenever you want to begin again."
)

NOTHING_TO_FORGET = N_("I have nothing stored about you in this chat.")

ANALYSE_ANYWAY = N_("Analyse anyway")

STALE_BUTTON = N_("That button is no longer valid. Please send the photo again.")

QUALITY_INTRO = N_("Before I look at this photo:")
QUALITY_OUTRO = N_(
    "A better photo gives a more useful answer. Send a new photo, or tap “{button}” to use "
    "this one."
)

WRITE_A_QUESTION = N_("Please write your question about the photo in words.")

TEXT_TOO_LONG = N_(
    "Your message is too long for me ({length} characters). Please ask your question again in "
    "at most {limit} characters."
)

EDITED = N_("I do not read edited messages. Please send your question again as a new message.")

FILE_TOO_BIG = N_(
    "This file is larger than the 20 MB I can download. Please send it as a photo instead of a "
    "file, or send a smaller copy."
)

DOWNLOAD_FAILED = N_("I could not download your file from Telegram. Please send it again.")

SOMETHING_WENT_WRONG = N_(
    "Sorry, something went wrong on our side. Please try again in a minute; if it keeps "
    "happening, use /start."
)


def quality_report(issues: Sequence[QualityIssue], _: Translate) -> str:
    """What is wrong with a photo and how to take a better one."""
    lines = [_(QUALITY_INTRO)]
    lines += [f"• {_(issue.problem)} {_(issue.tip)}" for issue in issues]
    lines.append("\n" + _(QUALITY_OUTRO).format(button=_(ANALYSE_ANYWAY)))
    return "\n".join(lines)
