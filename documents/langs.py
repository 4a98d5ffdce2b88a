"""Per-language vocabulary, number and date formats, and fonts for the document generator."""

from __future__ import annotations

import random
from dataclasses import dataclass

from exaone_edge.documents.fonts import font_index, pick_fonts

MONTHS_EN = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
             "November", "December")


@dataclass(frozen=True)
class Lang:
    code: str
    fonts: tuple[str, ...]  # regular faces, in order of preference
    bold: dict[str, str]  # regular face → its bold face
    sample: str  # characters a usable font must render
    package: str  # the Debian package that provides the fonts
    decimals: int  # currency decimals (KRW has none)
    currency: str
    companies: tuple[str, ...]
    people: tuple[str, ...]
    cities: tuple[str, ...]
    items: tuple[tuple[str, int, int], ...]  # (name, low price, high price) in currency units
    words: dict[str, str]  # label key → text

    def money(self, value: float) -> str:
        return f"{value:,.{self.decimals}f}"

    def date(self, year: int, month: int, day: int, style: int) -> str:
        if style == 0:
            return f"{year}-{month:02d}-{day:02d}"
        if self.code == "ko":
            return f"{year}년 {month}월 {day}일"
        return f"{MONTHS_EN[month - 1]} {day}, {year}"

    def w(self, key: str) -> str:
        return self.words[key]


EN_WORDS = {
    "invoice": "INVOICE", "receipt": "RECEIPT", "invoice_no": "Invoice No.", "date": "Date", "due": "Due date",
    "bill_to": "Bill to", "from": "From", "item": "Description", "qty": "Qty", "unit": "Unit price",
    "amount": "Amount", "subtotal": "Subtotal", "tax": "VAT (10%)", "total": "Total", "thanks": "Thank you for your business.",
    "store": "Store", "cashier": "Cashier", "card": "Card payment", "balance_sheet": "Balance Sheet",
    "income_statement": "Income Statement", "assets": "Assets", "liabilities": "Liabilities", "equity": "Equity",
    "total_assets": "Total assets", "total_liabilities": "Total liabilities", "total_equity": "Total equity",
    "total_le": "Total liabilities and equity", "as_of": "As of", "for_year": "For the year ended",
    "unit_note": "(in thousands)", "notes": "Notes", "revenue": "Revenue", "cogs": "Cost of sales",
    "gross": "Gross profit", "sga": "Selling and administrative expenses", "operating": "Operating income",
    "finance": "Finance costs", "pretax": "Income before tax", "income_tax": "Income tax expense",
    "net": "Net income", "region": "Region", "quarterly": "Quarterly sales by region", "chart_units": "(units)",
    "form_title": "Account Opening Application", "name": "Name", "birth": "Date of birth", "phone": "Phone",
    "address": "Address", "account_type": "Account type", "signature": "Signature", "branch": "Branch",
    "question_total": "What is the total amount due on this invoice?", "yes": "Yes", "no": "No",
}
KO_WORDS = {
    "invoice": "세금계산서", "receipt": "영수증", "invoice_no": "계산서 번호", "date": "작성일자", "due": "지급기한",
    "bill_to": "공급받는자", "from": "공급자", "item": "품목", "qty": "수량", "unit": "단가", "amount": "공급가액",
    "subtotal": "합계", "tax": "부가세 (10%)", "total": "총액", "thanks": "이용해 주셔서 감사합니다.",
    "store": "매장", "cashier": "계산원", "card": "카드 결제", "balance_sheet": "재무상태표",
    "income_statement": "손익계산서", "assets": "자산", "liabilities": "부채", "equity": "자본",
    "total_assets": "자산총계", "total_liabilities": "부채총계", "total_equity": "자본총계",
    "total_le": "부채와 자본총계", "as_of": "기준일", "for_year": "회계연도", "unit_note": "(단위: 천원)",
    "notes": "주석", "revenue": "매출액", "cogs": "매출원가", "gross": "매출총이익", "sga": "판매비와관리비",
    "operating": "영업이익", "finance": "금융비용", "pretax": "법인세비용차감전순이익", "income_tax": "법인세비용",
    "net": "당기순이익", "region": "지역", "quarterly": "지역별 분기 매출", "chart_units": "(단위: 건)",
    "form_title": "계좌 개설 신청서", "name": "성명", "birth": "생년월일", "phone": "연락처", "address": "주소",
    "account_type": "계좌 종류", "signature": "서명", "branch": "지점", "yes": "예", "no": "아니오",
}

LANGS: dict[str, Lang] = {
    "en": Lang(
        code="en",
        fonts=("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansCondensed.ttf", "NanumGothic.ttf", "NanumMyeongjo.ttf"),
        bold={"DejaVuSans.ttf": "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf": "DejaVuSerif-Bold.ttf",
              "DejaVuSansCondensed.ttf": "DejaVuSansCondensed-Bold.ttf", "NanumGothic.ttf": "NanumGothicBold.ttf",
              "NanumMyeongjo.ttf": "NanumMyeongjoBold.ttf"},
        sample="Ag$9", package="fonts-dejavu-core", decimals=2, currency="$",
        companies=("Northwind Traders", "Contoso Ltd.", "Blue Harbor Logistics", "Fabrikam Inc.", "Pinecrest Medical",
                   "Harper & Cole LLP", "Summit Analytics", "Greenfield Foods", "Atlas Components", "Riverside Bank"),
        people=("Emily Carter", "James Walker", "Olivia Chen", "Daniel Brooks", "Sophia Patel", "Michael Reyes",
                "Hannah Kim", "Robert Nguyen", "Grace Miller", "Samuel Lee"),
        cities=("Boston, MA", "Austin, TX", "Seattle, WA", "Denver, CO", "Chicago, IL", "Atlanta, GA"),
        items=(("Printer paper (box)", 20, 60), ("Toner cartridge", 40, 180), ("Consulting hours", 90, 250),
               ("Laptop stand", 25, 90), ("Software license", 100, 900), ("Office chair", 120, 480),
               ("Cloud storage (1 TB)", 8, 30), ("Network switch", 150, 700), ("Shipping", 10, 80),
               ("Maintenance contract", 200, 1500), ("USB-C cable", 5, 25), ("Monitor 27\"", 180, 450)),
        words=EN_WORDS,
    ),
    "ko": Lang(
        code="ko",
        fonts=("NanumGothic.ttf", "NanumMyeongjo.ttf", "NanumBarunGothic.ttf", "NanumSquareR.ttf"),
        bold={"NanumGothic.ttf": "NanumGothicBold.ttf", "NanumMyeongjo.ttf": "NanumMyeongjoBold.ttf",
              "NanumBarunGothic.ttf": "NanumBarunGothicBold.ttf", "NanumSquareR.ttf": "NanumSquareB.ttf"},
        sample="한글가힣", package="fonts-nanum", decimals=0, currency="₩",
        companies=("한빛상사(주)", "대한물류", "서울정밀", "미래에셋컨설팅", "청솔식품(주)", "동해전자", "하나로의료기",
                   "새봄법무법인", "누리소프트", "가람건설(주)"),
        people=("김민준", "이서연", "박지훈", "최수빈", "정예은", "강도윤", "조하은", "윤서준", "장지민", "임채원"),
        cities=("서울특별시 강남구", "부산광역시 해운대구", "대전광역시 유성구", "인천광역시 연수구", "경기도 성남시"),
        items=(("A4 복사용지", 20000, 45000), ("토너 카트리지", 60000, 190000), ("컨설팅 용역", 150000, 900000),
               ("노트북 거치대", 30000, 90000), ("소프트웨어 라이선스", 200000, 1200000), ("사무용 의자", 150000, 500000),
               ("클라우드 저장공간", 10000, 40000), ("네트워크 스위치", 180000, 800000), ("배송비", 3000, 15000),
               ("유지보수 계약", 300000, 2000000), ("USB-C 케이블", 5000, 20000), ("모니터 27인치", 250000, 600000)),
        words=KO_WORDS,
    ),
}


def lang_fonts(lang: Lang) -> list[str]:
    """Font file names usable for `lang` (fails naming the font package when none is installed)."""
    return [path.name for path in pick_fonts(lang.fonts, lang.sample, lang.code, lang.package)]


def pick(rng: random.Random, lang: Lang, usable: list[str]) -> tuple[str, str]:
    """A (regular, bold) font pair for one document."""
    regular = rng.choice(usable)
    bold = lang.bold.get(regular, regular)
    return regular, bold if bold in font_index() else regular
