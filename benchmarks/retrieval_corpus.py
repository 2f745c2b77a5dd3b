"""The retrieval benchmark's documents and labelled queries.

Eleven short documents on unrelated topics (25 letter pages with a real
text layer), written for this benchmark and kept apart from the samples
the tests use. Each query names the one page that answers it:

* ``paraphrase`` queries say it in other words than the page's own (the
  benchmark prints any content word they share with their page, so a slip
  shows);
* ``exact`` queries name something only that page contains (a surname, a
  reference, a product name), as a user who remembers a detail would.
"""

from __future__ import annotations

from dataclasses import dataclass

DOCUMENTS: dict[str, list[list[str]]] = {
    "bicycle-maintenance.pdf": [
        ["Caring for your chain", "", "Wipe the chain with a dry rag after wet rides.",
         "Apply one drop of lubricant to each roller,", "then wipe off the excess after five minutes.",
         "A dry, squeaking chain wears the cassette fast.", "Replace the chain once it has stretched 0.5%."],
        ["Replacing brake pads", "", "Rim brake pads have grooves; when the grooves",
         "are gone, the pads must be changed.", "Loosen the fixing bolt with a 5 mm hex key,",
         "slide the new pad in, align it with the rim,", "and tighten to 6 Nm. Test the lever before riding."],
        ["Fixing a flat tyre", "", "Remove the wheel and lever one side of the tyre off.",
         "Pull out the inner tube and find the hole", "by pumping air and listening for the hiss.",
         "Roughen the rubber, apply glue, press the patch.", "Check the tyre for thorns before refitting."],
    ],
    "home-insurance-policy.pdf": [
        ["What this policy covers", "", "Damage to your home caused by fire, smoke,",
         "lightning, explosion or storm.", "Theft or attempted theft by forced entry.",
         "Accidental breakage of fixed glass and sinks.", "The most we pay for any one claim is 250,000 GBP."],
        ["What is not covered", "", "Wear and tear, gradual deterioration,",
         "damp, rot, mould and insect infestation.", "Loss while the home is left empty for more",
         "than 60 days in a row.", "Damage by rising water in designated flood zones."],
        ["How to make a claim", "", "Call our claims line on 0800 555 0199 within", "30 days of the incident.",
         "Keep receipts and photographs of the damage.", "Do not throw away damaged items until",
         "our assessor has seen them. Reference: HX-2231."],
    ],
    "astronomy-club-newsletter.pdf": [
        ["Perseids watch night", "", "The club meets on 12 August at Hollow Hill",
         "to watch the Perseid meteors after midnight.", "Bring a reclining chair and warm clothes.",
         "No lights please: eyes need twenty minutes", "to adapt to the dark."],
        ["Looking after your telescope", "", "Keep the lens cap on when not observing.",
         "Clean mirrors only when dust is visible,", "with distilled water and a soft brush.",
         "Store the tube horizontally in a dry room.", "Collimate the optics at the start of each season."],
    ],
    "employee-handbook.pdf": [
        ["Annual leave", "", "Full-time staff receive 25 days of paid holiday", "plus public holidays.",
         "Requests go to your manager two weeks ahead.", "Up to five unused days may be carried over",
         "into the next year."],
        ["Working from home", "", "You may work remotely up to three days a week.",
         "The company lends a laptop and a monitor.", "Be reachable on chat between 10:00 and 16:00.",
         "Report security incidents to the Helpdesk Ninety team."],
        ["Expenses", "", "Submit receipts within one month through", "the Expensa portal.",
         "Train travel is second class; flights need", "approval from a director.",
         "Meals on business trips: up to 40 EUR per day."],
    ],
    "sourdough-guide.pdf": [
        ["Feeding the starter", "", "Mix equal weights of flour and water",
         "into the jar every day at the same time.", "The culture is ready when it doubles",
         "within six hours and smells pleasantly sour.", "Keep it in the fridge between bakes."],
        ["Shaping and baking", "", "Fold the dough four times over two hours.",
         "Shape a tight ball and proof it overnight", "in a floured basket in the fridge.",
         "Bake in a covered pot at 250 C for 20 minutes,", "then uncovered for 25 minutes more."],
    ],
    "city-council-minutes.pdf": [
        ["Transport committee", "", "The council approved bus line 47 linking",
         "the railway station to the university campus.", "Services start in March, every 12 minutes",
         "at peak hours. Councillor Adeyemi abstained."],
        ["Parks and recreation", "", "Riverside Park will be renovated for 1.8 M EUR:",
         "a new playground, benches and lighting.", "Works last from May to September;",
         "the north gate stays open throughout."],
    ],
    "vaccination-leaflet.pdf": [
        ["Who should get the flu jab", "", "Everyone aged 65 or over, pregnant women,",
         "and people with asthma, diabetes or", "heart disease. Children from two years old",
         "get a nasal spray instead of an injection."],
        ["After your jab", "", "Your arm may feel sore for a day or two.",
         "A mild fever or aching muscles can follow;", "rest and drink fluids. Seek help at once",
         "if you have trouble breathing or a swollen face."],
    ],
    "software-release-notes.pdf": [
        ["Version 3.2 highlights", "", "Dark theme for the editor and the console.",
         "Export to CSV and Parquet from any table view.", "Start-up is 40% faster on large projects.",
         "Plugins can now register keyboard shortcuts."],
        ["Known issues and upgrading", "", "Back up your settings folder before upgrading.",
         "Projects written by 3.2 cannot be opened by 3.1.", "On Windows, the installer may need",
         "administrator rights. Fix expected in 3.2.1."],
    ],
    "garden-calendar.pdf": [
        ["Spring", "", "Sow tomatoes indoors in March on a sunny sill.",
         "Plant potatoes outside once frosts are over.", "Mulch the borders with compost.",
         "Start mowing the lawn on a high setting."],
        ["Autumn", "", "Prune apple trees after the leaves fall.", "Plant tulip and daffodil bulbs in October.",
         "Rake leaves into wire cages to make leaf mould.", "Lift dahlias and store the tubers frost-free."],
    ],
    "museum-guide.pdf": [
        ["Visiting", "", "Open Tuesday to Sunday, 10:00 to 18:00.", "Closed on Mondays and on 25 December.",
         "Adults 14 EUR, students 8 EUR,", "under-18s free. Audio guides cost 3 EUR."],
        ["The Roman gallery", "", "Mosaics from a villa found near the river in 1954,",
         "coins of Emperor Hadrian,", "and a bronze helmet of a cavalry officer.",
         "Ask for the free tour at 14:30 every Saturday."],
    ],
    "tax-return-instructions.pdf": [
        ["Deadlines", "", "Paper returns must reach us by 31 October.", "Online returns are due by 31 January.",
         "A late return costs a 100 GBP penalty,", "plus daily fines after three months."],
        ["Gifts to charity", "", "Donations to registered charities reduce",
         "the tax you owe. Keep a record of each gift.", "Under Gift Aid, the charity claims 25p",
         "for every pound you give."],
    ],
}


@dataclass(frozen=True)
class Query:
    """A question and the page (document, 1-based page) that answers it."""

    text: str
    document: str
    page: int
    kind: str  # "paraphrase" or "exact"


def _q(kind: str, text: str, document: str, page: int) -> Query:
    return Query(text, document, page, kind)


QUERIES: list[Query] = [
    # In other words than the page's own.
    _q("paraphrase", "keeping the drivetrain oiled", "bicycle-maintenance.pdf", 1),
    _q("paraphrase", "my bike will not slow down properly, how do I swap the worn parts that grip",
       "bicycle-maintenance.pdf", 2),
    _q("paraphrase", "mending a puncture by the roadside", "bicycle-maintenance.pdf", 3),
    _q("paraphrase", "am I protected against burglary", "home-insurance-policy.pdf", 1),
    _q("paraphrase", "are termites or fungus excluded", "home-insurance-policy.pdf", 2),
    _q("paraphrase", "steps to get reimbursed by the insurer", "home-insurance-policy.pdf", 3),
    _q("paraphrase", "shooting stars viewing evening", "astronomy-club-newsletter.pdf", 1),
    _q("paraphrase", "maintaining optical equipment for stargazing", "astronomy-club-newsletter.pdf", 2),
    _q("paraphrase", "vacation allowance for personnel", "employee-handbook.pdf", 1),
    _q("paraphrase", "telecommuting rules", "employee-handbook.pdf", 2),
    _q("paraphrase", "claiming back what I spent on a company journey", "employee-handbook.pdf", 3),
    _q("paraphrase", "looking after the fermented leaven", "sourdough-guide.pdf", 1),
    _q("paraphrase", "oven temperature for a loaf", "sourdough-guide.pdf", 2),
    _q("paraphrase", "new public transit connecting the college", "city-council-minutes.pdf", 1),
    _q("paraphrase", "money to refurbish a green space", "city-council-minutes.pdf", 2),
    _q("paraphrase", "influenza immunisation eligibility for the elderly", "vaccination-leaflet.pdf", 1),
    _q("paraphrase", "common reactions once vaccinated", "vaccination-leaflet.pdf", 2),
    _q("paraphrase", "night mode and quicker launch", "software-release-notes.pdf", 1),
    _q("paraphrase", "what should I copy somewhere safe before updating", "software-release-notes.pdf", 2),
    _q("paraphrase", "when to begin growing vegetables from seed", "garden-calendar.pdf", 1),
    _q("paraphrase", "trimming orchard branches in the cold months", "garden-calendar.pdf", 2),
    _q("paraphrase", "admission prices and hours", "museum-guide.pdf", 1),
    _q("paraphrase", "ancient empire artefacts on display", "museum-guide.pdf", 2),
    _q("paraphrase", "consequences of submitting after the cut-off", "tax-return-instructions.pdf", 1),
    _q("paraphrase", "are philanthropic contributions deductible", "tax-return-instructions.pdf", 2),
    # A detail only that page has.
    _q("exact", "HX-2231", "home-insurance-policy.pdf", 3),
    _q("exact", "Hollow Hill", "astronomy-club-newsletter.pdf", 1),
    _q("exact", "Expensa", "employee-handbook.pdf", 3),
    _q("exact", "Helpdesk Ninety", "employee-handbook.pdf", 2),
    _q("exact", "Councillor Adeyemi", "city-council-minutes.pdf", 1),
    _q("exact", "Parquet export", "software-release-notes.pdf", 1),
    _q("exact", "dahlias", "garden-calendar.pdf", 2),
    _q("exact", "Hadrian", "museum-guide.pdf", 2),
    _q("exact", "Gift Aid", "tax-return-instructions.pdf", 2),
    _q("exact", "hex key", "bicycle-maintenance.pdf", 2),
    _q("exact", "collimate", "astronomy-club-newsletter.pdf", 2),
    _q("exact", "nasal spray", "vaccination-leaflet.pdf", 1),
]
