"""Financial statements with footnotes and tables with merged (spanning) headers."""

from __future__ import annotations

from exaone_edge.documents.blocks import Built, Cell, Ctx, draw_table
from exaone_edge.documents.model import QA


def _statement_header(ctx: Ctx, page, title: str, company: str, period: str) -> float:
    page.text(page.width / 2, 60, company, ctx.bold, ctx.size * 1.3, align="center")
    page.text(page.width / 2, 60 + ctx.size * 2, title, ctx.bold, ctx.size * 1.6, align="center")
    page.text(page.width / 2, 60 + ctx.size * 3.8, period, ctx.font, ctx.size, align="center")
    page.text(page.width - 50, 60 + ctx.size * 5.4, ctx.lang.w("unit_note"), ctx.font, ctx.size * 0.85, align="right")
    return 60 + ctx.size * 6.5


def _money(value: int) -> str:
    return f"({-value:,})" if value < 0 else f"{value:,}"


def _footnotes(ctx: Ctx, page, y: float, notes: list[str]) -> None:
    page.line(50, y, 250, y, 0.5)
    for number, note in enumerate(notes, 1):
        y += ctx.size * 1.5
        page.text(50, y, f"{number}) {note}", ctx.font, ctx.size * 0.8, color=(60, 60, 60))


def balance_sheet(ctx: Ctx, company: str | None = None, year: int | None = None) -> Built:
    lang, rng = ctx.lang, ctx.rng
    page = ctx.page()
    company = company or rng.choice(lang.companies)
    year = year or rng.randint(2019, 2025)
    prior = year - 1
    period = f"{lang.w('as_of')} {lang.date(year, 12, 31, rng.randint(0, 1))}"
    y = _statement_header(ctx, page, lang.w("balance_sheet"), company, period)
    ko = lang.code == "ko"
    asset_names = ["현금및현금성자산", "매출채권", "재고자산", "유형자산", "무형자산"] if ko else \
        ["Cash and cash equivalents", "Trade receivables", "Inventories", "Property, plant and equipment", "Intangible assets"]
    liab_names = ["매입채무", "단기차입금", "장기차입금"] if ko else ["Trade payables", "Short-term borrowings", "Long-term borrowings"]
    assets = {name: (rng.randint(500, 90000), rng.randint(500, 90000)) for name in asset_names}
    liabilities = {name: (rng.randint(300, 40000), rng.randint(300, 40000)) for name in liab_names}
    total_a = tuple(sum(v[i] for v in assets.values()) for i in (0, 1))
    total_l = tuple(sum(v[i] for v in liabilities.values()) for i in (0, 1))
    equity = tuple(total_a[i] - total_l[i] for i in (0, 1))
    rows = [[lang.w("assets"), "", ""]]
    rows += [[f"  {name}", _money(a), _money(b)] for name, (a, b) in assets.items()]
    rows += [[lang.w("total_assets"), _money(total_a[0]), _money(total_a[1])], [lang.w("liabilities"), "", ""]]
    rows += [[f"  {name}", _money(a), _money(b)] for name, (a, b) in liabilities.items()]
    rows += [[lang.w("total_liabilities"), _money(total_l[0]), _money(total_l[1])],
             [lang.w("total_equity") + " 1)", _money(equity[0]), _money(equity[1])],
             [lang.w("total_le"), _money(total_a[0]), _money(total_a[1])]]
    width = page.width - 100
    header = [[Cell(""), Cell(str(year)), Cell(str(prior))]]
    y = draw_table(ctx, page, 50, y, [width * 0.56, width * 0.22, width * 0.22], header, rows)
    shares = rng.randint(100, 9000) * 1000
    notes = ([f"자본총계에는 보통주 {shares:,}주가 포함되어 있습니다.", "본 재무제표는 한국채택국제회계기준에 따라 작성되었습니다."]
             if ko else [f"Equity includes {shares:,} ordinary shares issued and outstanding.",
                         "Prepared in accordance with International Financial Reporting Standards."])
    _footnotes(ctx, page, y + 30, notes)
    cash = asset_names[0]
    qa = [QA(f"{year}년 자산총계는 얼마입니까?" if ko else f"What were total assets in {year}?", [_money(total_a[0])], 0),
          QA(f"{prior}년 부채총계는 얼마입니까?" if ko else f"What were total liabilities in {prior}?", [_money(total_l[1])], 0),
          QA(f"{year}년 {cash}은 얼마입니까?" if ko else f"How much were cash and cash equivalents in {year}?",
             [_money(assets[cash][0])], 0),
          QA("발행된 보통주는 몇 주입니까?" if ko else "How many ordinary shares are outstanding according to the notes?",
             [f"{shares:,}"], 0)]
    return Built([page], qa)


def income_statement(ctx: Ctx, company: str | None = None, year: int | None = None) -> Built:
    lang, rng = ctx.lang, ctx.rng
    page = ctx.page()
    company = company or rng.choice(lang.companies)
    year = year or rng.randint(2019, 2025)
    period = f"{lang.w('for_year')} {lang.date(year, 12, 31, rng.randint(0, 1))}"
    y = _statement_header(ctx, page, lang.w("income_statement"), company, period)
    revenue = [rng.randint(20000, 500000) for _ in range(2)]
    cogs = [-round(r * rng.uniform(0.45, 0.75)) for r in revenue]
    gross = [r + c for r, c in zip(revenue, cogs)]
    sga = [-round(g * rng.uniform(0.3, 0.7)) for g in gross]
    operating = [g + s for g, s in zip(gross, sga)]
    finance = [-rng.randint(100, 5000) for _ in range(2)]
    pretax = [o + f for o, f in zip(operating, finance)]
    tax = [-round(max(p, 0) * 0.22) for p in pretax]
    net = [p + t for p, t in zip(pretax, tax)]
    lines = [("revenue", revenue), ("cogs", cogs), ("gross", gross), ("sga", sga), ("operating", operating),
             ("finance", finance), ("pretax", pretax), ("income_tax", tax), ("net", net)]
    rows = [[lang.w(key) + (" 1)" if key == "finance" else ""), _money(a), _money(b)] for key, (a, b) in lines]
    width = page.width - 100
    header = [[Cell(""), Cell(str(year)), Cell(str(year - 1))]]
    y = draw_table(ctx, page, 50, y, [width * 0.56, width * 0.22, width * 0.22], header, rows)
    rate = rng.choice([3.1, 3.8, 4.2, 4.75, 5.3])
    ko = lang.code == "ko"
    notes = [f"금융비용은 주로 연 {rate}%의 차입금 이자입니다.", "괄호 안의 금액은 비용 또는 손실을 나타냅니다."] if ko else \
        [f"Finance costs are mainly interest on borrowings at {rate}% per annum.", "Amounts in brackets are expenses or losses."]
    _footnotes(ctx, page, y + 30, notes)
    qa = [QA(f"{year}년 매출액은 얼마입니까?" if ko else f"What was revenue in {year}?", [_money(revenue[0])], 0),
          QA(f"{year}년 당기순이익은 얼마입니까?" if ko else f"What was net income in {year}?", [_money(net[0])], 0),
          QA(f"{year - 1}년 영업이익은 얼마입니까?" if ko else f"What was operating income in {year - 1}?",
             [_money(operating[1])], 0),
          QA("차입금의 연 이자율은 얼마입니까?" if ko else "What interest rate do the notes give for borrowings?",
             [f"{rate}%"], 0)]
    return Built([page], qa)


def annual_report(ctx: Ctx) -> Built:
    """Two pages of one company's year: the balance sheet, then the income statement."""
    company, year = ctx.rng.choice(ctx.lang.companies), ctx.rng.randint(2019, 2025)
    first, second = balance_sheet(ctx, company, year), income_statement(ctx, company, year)
    moved = [QA(qa.question, qa.answers, 1) for qa in second.qa]
    return Built(first.pages + second.pages, first.qa + moved)


def merged_table(ctx: Ctx) -> Built:
    lang, rng = ctx.lang, ctx.rng
    landscape = rng.random() < 0.5
    page = ctx.page(landscape)
    ko = lang.code == "ko"
    years = sorted(rng.sample(range(2018, 2026), 2))
    regions = ["서울", "부산", "대구", "광주", "대전", "울산"] if ko else ["North", "South", "East", "West", "Central", "Online"]
    regions = regions[: rng.randint(4, 6)]
    quarters = ["H1", "H2"] if rng.random() < 0.5 else (["상반기", "하반기"] if ko else ["1st half", "2nd half"])
    data = {(r, y, q): rng.randint(50, 9999) for r in regions for y in years for q in quarters}
    title = lang.w("quarterly")
    page.text(50, 60, title, ctx.bold, ctx.size * 1.5)
    page.text(50, 60 + ctx.size * 1.8, lang.w("chart_units"), ctx.font, ctx.size * 0.85)
    width = page.width - 100
    first = width * 0.24
    rest = (width - first) / (len(years) * len(quarters))
    header = [[Cell(lang.w("region"))] + [Cell(str(y), len(quarters)) for y in years],
              [Cell("")] + [Cell(q) for _ in years for q in quarters]]
    rows = [[r] + [f"{data[(r, y, q)]:,}" for y in years for q in quarters] for r in regions]
    draw_table(ctx, page, 50, 60 + ctx.size * 3, [first] + [rest] * (len(years) * len(quarters)), header, rows)
    region, year, half = rng.choice(regions), rng.choice(years), rng.choice(quarters)
    qa = [QA(f"{year}년 {half} {region} 지역의 값은 얼마입니까?" if ko else f"What is the value for {region} in {year}, {half}?",
             [f"{data[(region, year, half)]:,}"], 0)]
    region, half = rng.choice(regions), rng.choice(quarters)
    qa.append(QA(f"{years[0]}년 {half} {region} 지역의 값은 얼마입니까?" if ko else
                 f"What is the value for {region} in {years[0]}, {half}?", [f"{data[(region, years[0], half)]:,}"], 0))
    return Built([page], qa)
