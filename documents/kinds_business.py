"""Invoices, receipts and application forms: line items, totals, parties, dates, filled fields."""

from __future__ import annotations

from exaone_edge.documents.blocks import Built, Cell, Ctx, draw_table
from exaone_edge.documents.canvas import Canvas
from exaone_edge.documents.model import QA


def _line_items(ctx: Ctx, count: int) -> list[tuple[str, int, float]]:
    chosen = ctx.rng.sample(ctx.lang.items, count)
    if ctx.lang.decimals:
        return [(name, ctx.rng.randint(1, 12), ctx.rng.randrange(low * 100, high * 100) / 100) for name, low, high in chosen]
    return [(name, ctx.rng.randint(1, 12), ctx.rng.randrange(low, high, 100)) for name, low, high in chosen]


def invoice(ctx: Ctx) -> Built:
    lang, rng = ctx.lang, ctx.rng
    page = ctx.page()
    margin = rng.choice([40.0, 50.0, 60.0])
    seller, buyer = rng.sample(lang.companies, 2)
    number = f"{rng.choice(['INV', 'TX', 'B'])}-{rng.randint(2019, 2025)}-{rng.randint(1000, 99999):05d}"
    issued, issued_on = ctx.date()
    due, _ = ctx.date(after=issued_on, days=rng.choice([14, 30, 45, 60]))
    accent = ctx.accent()
    page.rect(0, 0, page.width, 70, fill=accent, stroke=None)
    page.text(margin, 46, lang.w("invoice"), ctx.bold, ctx.size * 2.2, color=(255, 255, 255))
    page.text(page.width - margin, 46, seller, ctx.bold, ctx.size * 1.3, align="right", color=(255, 255, 255))
    y = 110.0
    for key, value in (("invoice_no", number), ("date", issued), ("due", due)):
        page.text(page.width - margin - 150, y, lang.w(key), ctx.bold, ctx.size)
        page.text(page.width - margin, y, value, ctx.font, ctx.size, align="right")
        y += ctx.size * 1.7
    page.text(margin, 110, lang.w("bill_to"), ctx.bold, ctx.size)
    page.text(margin, 110 + ctx.size * 1.7, buyer, ctx.font, ctx.size)
    page.text(margin, 110 + ctx.size * 3.4, rng.choice(lang.cities), ctx.font, ctx.size)
    items = _line_items(ctx, rng.randint(3, 8))
    amounts = [qty * price for _, qty, price in items]
    width = page.width - 2 * margin
    widths = [width * 0.46, width * 0.12, width * 0.2, width * 0.22]
    header = [[Cell(lang.w(k)) for k in ("item", "qty", "unit", "amount")]]
    rows = [[name, str(qty), lang.money(price), lang.money(amount)] for (name, qty, price), amount in zip(items, amounts)]
    y = draw_table(ctx, page, margin, max(y, 110 + ctx.size * 5) + 20, widths, header, rows)
    subtotal = sum(amounts)
    tax = round(subtotal * 0.1, lang.decimals)
    total = subtotal + tax
    y += 10
    for key, value, face in (("subtotal", subtotal, ctx.font), ("tax", tax, ctx.font), ("total", total, ctx.bold)):
        y += ctx.size * 1.9
        page.text(page.width - margin - 170, y, lang.w(key), face, ctx.size)
        page.text(page.width - margin, y, f"{lang.currency}{lang.money(value)}", face, ctx.size, align="right")
    page.text(margin, page.height - 60, lang.w("thanks"), ctx.font, ctx.size * 0.9, color=(90, 90, 90))
    name, qty, _ = items[rng.randrange(len(items))]
    ko = lang.code == "ko"
    qa = [
        QA("이 계산서의 총액은 얼마입니까?" if ko else "What is the total amount of this invoice?",
           [f"{lang.currency}{lang.money(total)}", lang.money(total)], 0),
        QA("계산서 번호는 무엇입니까?" if ko else "What is the invoice number?", [number], 0),
        QA("공급받는자는 누구입니까?" if ko else "Who is the invoice billed to?", [buyer], 0),
        QA(f"'{name}'의 수량은 몇 개입니까?" if ko else f"How many units of '{name}' were invoiced?", [str(qty)], 0),
        QA("작성일자는 언제입니까?" if ko else "What is the invoice date?", [issued], 0),
    ]
    return Built([page], qa)


def receipt(ctx: Ctx) -> Built:
    lang, rng = ctx.lang, ctx.rng
    items = _line_items(ctx, rng.randint(2, 7))
    size = ctx.size * 0.9
    height = 230 + len(items) * size * 1.6 + 120
    page = Canvas(226.0, round(height))  # an 80 mm till roll
    store = rng.choice(lang.companies)
    page.text(113, 40, store, ctx.bold, size * 1.3, align="center")
    page.text(113, 40 + size * 1.6, rng.choice(lang.cities), ctx.font, size * 0.85, align="center")
    issued, _ = ctx.date()
    clock = f"{rng.randint(8, 21):02d}:{rng.randint(0, 59):02d}"
    page.text(14, 90, f"{lang.w('date')}: {issued} {clock}", ctx.font, size * 0.85)
    cashier = rng.choice(lang.people)
    page.text(14, 90 + size * 1.5, f"{lang.w('cashier')}: {cashier}", ctx.font, size * 0.85)
    y = 90 + size * 2.6
    page.line(14, y, 212, y, 0.5)
    for name, qty, price in items:
        y += size * 1.6
        page.text(14, y, f"{name} x{qty}", ctx.font, size)
        page.text(212, y, lang.money(qty * price), ctx.font, size, align="right")
    total = sum(qty * price for _, qty, price in items)
    y += size * 1.2
    page.line(14, y, 212, y, 0.5)
    y += size * 2
    page.text(14, y, lang.w("total"), ctx.bold, size * 1.2)
    page.text(212, y, lang.money(total), ctx.bold, size * 1.2, align="right")
    page.text(14, y + size * 2, lang.w("card"), ctx.font, size * 0.85)
    page.text(113, y + size * 4.5, lang.w("thanks"), ctx.font, size * 0.8, align="center")
    ko = lang.code == "ko"
    qa = [QA("영수증의 총액은 얼마입니까?" if ko else "What is the total on this receipt?", [lang.money(total)], 0),
          QA("이 영수증을 발행한 매장은 어디입니까?" if ko else "Which store issued this receipt?", [store], 0),
          QA("계산원의 이름은 무엇입니까?" if ko else "What is the cashier's name?", [cashier], 0)]
    return Built([page], qa)


def form(ctx: Ctx) -> Built:
    lang, rng = ctx.lang, ctx.rng
    page = ctx.page()
    margin = rng.choice([45.0, 55.0])
    bank = rng.choice(lang.companies)
    page.text(page.width / 2, 70, lang.w("form_title"), ctx.bold, ctx.size * 1.8, align="center")
    page.text(page.width / 2, 70 + ctx.size * 2.2, bank, ctx.font, ctx.size, align="center")
    birth, _ = ctx.date(years=(1950, 2003))
    phone = f"010-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
    fields = {"name": rng.choice(lang.people), "birth": birth, "phone": phone, "address": rng.choice(lang.cities),
              "branch": rng.choice(lang.cities).split()[-1]}
    y = 130.0
    row = ctx.size * 2.4
    label_w = 130.0
    for key, value in fields.items():
        page.rect(margin, y, label_w, row, fill=(235, 235, 235), width=0.5)
        page.rect(margin + label_w, y, page.width - 2 * margin - label_w, row, width=0.5)
        page.text(margin + 6, y + row * 0.65, lang.w(key), ctx.bold, ctx.size)
        page.text(margin + label_w + 8, y + row * 0.65, value, ctx.font, ctx.size, color=(20, 20, 120))
        y += row
    kinds = ["Checking", "Savings", "Deposit"] if lang.code == "en" else ["보통예금", "적금", "정기예금"]
    chosen = rng.choice(kinds)
    y += 20
    page.text(margin, y, lang.w("account_type"), ctx.bold, ctx.size)
    x = margin + 130
    for kind in kinds:
        page.rect(x, y - ctx.size * 0.8, ctx.size, ctx.size, width=0.6)
        if kind == chosen:
            page.line(x + 1, y - ctx.size * 0.8 + 1, x + ctx.size - 1, y - 1, 1.0)
            page.line(x + ctx.size - 1, y - ctx.size * 0.8 + 1, x + 1, y - 1, 1.0)
        page.text(x + ctx.size * 1.5, y, kind, ctx.font, ctx.size)
        x += 110
    signed, _ = ctx.date()
    page.text(margin, page.height - 120, f"{lang.w('date')}: {signed}", ctx.font, ctx.size)
    page.text(page.width - margin - 200, page.height - 120, f"{lang.w('signature')}:", ctx.font, ctx.size)
    page.line(page.width - margin - 120, page.height - 118, page.width - margin, page.height - 118)
    ko = lang.code == "ko"
    qa = [QA("신청인의 성명은 무엇입니까?" if ko else "What is the applicant's name?", [fields["name"]], 0),
          QA("신청인의 연락처는 무엇입니까?" if ko else "What phone number is given on the form?", [phone], 0),
          QA("신청한 계좌 종류는 무엇입니까?" if ko else "Which account type is checked?", [chosen], 0),
          QA("신청인의 생년월일은 언제입니까?" if ko else "What is the applicant's date of birth?", [birth], 0)]
    return Built([page], qa)
