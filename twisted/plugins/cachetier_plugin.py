from twisted.application.service import ServiceMaker

cachetier = ServiceMaker(
    "cachetier",
    "cachetier.tap",
    "A pull-through cache tier for large static media.",
    "cachetier",
)
