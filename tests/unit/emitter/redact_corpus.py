"""The redaction corpus: query texts that must be masked (each with the kind
of data it holds and the text expected back) and texts that must come back
unchanged (what people ask a CV service, numbers included).

Card numbers are the networks' published test numbers; phone numbers are
from the ranges kept for fiction and examples (Ofcom's 020 7946 0xxx,
North America's 555-01xx); the SSN is the "Woolworth" number, voided in 1938;
IBANs are the ISO 13616 examples.
"""

from __future__ import annotations

from typing import NamedTuple


class Positive(NamedTuple):
    kind: str  # the placeholder's name: email, phone, card, iban, ip, number
    text: str
    expected: str


POSITIVES: tuple[Positive, ...] = (
    # e-mail addresses
    Positive("email", "mail me at jane.doe@example.com", "mail me at [email]"),
    Positive("email", "JANE.DOE@EXAMPLE.COM is my address", "[email] is my address"),
    Positive("email", "contact: jane.doe+jobs@mail.example.co.uk.", "contact: [email]."),
    Positive("email", "reply to <j_doe-99@example.org>", "reply to <[email]>"),
    Positive("email", "is (ops@sub-domain.example.io) right?", "is ([email]) right?"),
    Positive("email", "two: a@example.com,b@example.net", "two: [email],[email]"),
    Positive("email", "unicode josé@exemple.fr ok", "unicode [email] ok"),
    Positive("email", "mailto:recruiter@example.com", "mailto:[email]"),
    # phone numbers
    Positive("phone", "call +44 20 7946 0958 tomorrow", "call [phone] tomorrow"),
    Positive("phone", "call +1 (555) 010-0123", "call [phone]"),
    Positive("phone", "+33 6 12 34 56 78 is my mobile", "[phone] is my mobile"),
    Positive("phone", "tel +49-30-1234567", "tel [phone]"),
    Positive("phone", "WhatsApp +447911123456", "WhatsApp [phone]"),
    Positive("phone", "+44 (0)20 7946 0958", "[phone]"),
    Positive("phone", "phone (555) 010-0199", "phone [phone]"),
    Positive("phone", "ring 555-010-0199 after 6", "ring [phone] after 6"),
    Positive("phone", "555.010.0199", "[phone]"),
    Positive("phone", "555 010 0199", "[phone]"),
    Positive("phone", "London 020 7946 0958", "London [phone]"),
    Positive("phone", "Berlin (030) 1234567", "Berlin [phone]"),
    Positive("phone", "Berlin 030/1234567", "Berlin [phone]"),
    Positive("phone", "Paris 06 12 34 56 78", "Paris [phone]"),
    Positive("phone", "Paris 06.12.34.56.78", "Paris [phone]"),
    Positive("phone", "mobile 0170-1234567", "mobile [phone]"),
    Positive("phone", "from abroad 0044 20 7946 0958", "from abroad [phone]"),
    # card numbers (Luhn-valid test numbers, in the ways they are written)
    Positive("card", "card 4111 1111 1111 1111 exp 12/27", "card [card] exp 12/27"),
    Positive("card", "4111-1111-1111-1111", "[card]"),
    Positive("card", "pay with 4111111111111111", "pay with [card]"),
    Positive("card", "mastercard 5555 5555 5555 4444", "mastercard [card]"),
    Positive("card", "amex 3782 822463 10005", "amex [card]"),
    Positive("card", "visa13 4222222222222 ok", "visa13 [card] ok"),
    # IBANs
    Positive("iban", "IBAN DE89 3704 0044 0532 0130 00", "IBAN [iban]"),
    Positive("iban", "GB82WEST12345698765432 is mine", "[iban] is mine"),
    Positive("iban", "fr14 2004 1010 0505 0001 3m02 606", "[iban]"),
    Positive("iban", "NL91ABNA0417164300", "[iban]"),
    # IPv4 addresses
    Positive("ip", "my server 192.168.1.20 is down", "my server [ip] is down"),
    Positive("ip", "ssh to 10.0.0.1", "ssh to [ip]"),
    Positive("ip", "from 203.0.113.7, why?", "from [ip], why?"),
    # long digit runs and grouped identifiers
    Positive("number", "my SSN is 078-05-1120, am I hired?", "my SSN is [number], am I hired?"),
    Positive("number", "ssn 078 05 1120", "ssn [number]"),
    Positive("number", "SSN:078051120", "SSN:[number]"),
    Positive("number", "my code is 123456", "my code is [number]"),
    Positive("number", "account 12-3456-7890", "account [number]"),
    Positive("number", "passport ID12345678", "passport ID[number]"),
    Positive("number", "card 1234 5678 9012 3456 (typo)", "card [number] (typo)"),
    Positive("number", "order #98765432 status", "order #[number] status"),
    Positive("number", "sort code 12-34-56 acct 31926819", "sort code 12-34-56 acct [number]"),
    Positive("number", "digits 1234567890123", "digits [number]"),
    Positive("number", "policy no. 0012345", "policy no. [number]"),
    Positive("number", "tax id 123-45-6789-0", "tax id [number]"),
    # digits and signs of other scripts and widths
    Positive(
        "number", "SSN \uff10\uff17\uff18-\uff10\uff15-\uff11\uff11\uff12\uff10", "SSN [number]"
    ),
    Positive("email", "mail jane\uff20example.com", "mail [email]"),
    Positive("phone", "call +٩٧١ ٤ ١٢٣ ٤٥٦٧", "call [phone]"),
    Positive("phone", "call +44\u00a020\u00a07946\u00a00958…", "call [phone]…"),
    Positive("number", "SSN 078\u201305\u20131120 (en dashes)", "SSN [number] (en dashes)"),
    # several kinds in one query
    Positive(
        "email",
        "I'm jane@example.com, +44 20 7946 0958, SSN 078-05-1120",
        "I'm [email], [phone], SSN [number]",
    ),
)

NEGATIVES: tuple[str, ...] = (
    "python 3.11 asyncio",
    "5 years of k8s",
    "ISO 27001",
    "ISO/IEC 27001:2022 certified?",
    "gRPC p99 of 12 ms",
    "what did she do in 2024",
    "from 2019 to 2024",
    "2020-2024 at Example Corp",
    "which projects started on 2024-01-15?",
    "available from 01.02.2025 at 10:30",
    "interview 05/06/2024 10:00",
    "handled 1,000,000 requests a day",
    "salary 120k or 95000",
    "version 1.2.3 of the SDK",
    "HTTP 404 and 503 handling",
    "ZIP 94105",
    "top 10 skills of 2024",
    "+5 years in Go",
    "latency 0.5 ms at p50",
    "pi is 3.14159",
    "tolerance 1e-6",
    "python@3.11 in a requirements file",
    "@dataclass or attrs?",
    "C++ and C# experience",
    "AB12 CDEF GHIJ is a word game",
    "v1.2.3.4 release notes",
    "IPv6 ::1 and 999.1.1.1",
    "RFC 7540 and RFC 9113",
    "Windows 10 2004 build",
    "a 3-2-1 backup",
    "E2E tests in 30 s, 2 cores, 4 GiB",
    "does she know Kubernetes?",
    "GPT-4o vs Llama 3 70B",
    "0 to 1 ownership",
    "1-3 years experience",
    "Terraform 1.6, AWS CDK v2",
    "user @octocat on GitHub",
    "1 2 3 4 5 6 7",
    "Ünïcödé résumé for Zürich, 5 years",
    "Python \uff13.\uff11\uff11 and \u0665 years",  # fullwidth and Arabic-Indic digits
    "\u65e5\u672c\u8a9e\u3067Python\u306e\u7d4c\u9a13\u306f\uff1f",  # fullwidth ?
)
