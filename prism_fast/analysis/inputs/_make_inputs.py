"""Generator of the bundled CKA input sets (prose.txt, web.txt, math.txt): original text composed from hand-written
templates and slot lists with a fixed seed, so the files are reproducible and carry no third-party data.

These stand in for WikiText / C4 / GSM8K in SPEC's CKA recipe when nothing can be downloaded: three clearly
different distributions (encyclopedic prose, noisy web text, arithmetic word problems), one input per line.
Regenerate: python -m prism_fast.analysis.inputs._make_inputs
"""
from __future__ import annotations

import random
from pathlib import Path

N_ITEMS = 240

PLACES = ["the northern valley", "a small coastal town", "the high plateau", "the river delta", "an inland basin",
          "the eastern foothills", "a volcanic island", "the old harbour district", "the southern steppe",
          "a mountain pass", "the lake country", "the desert margin"]
THINGS = ["the water mill", "the printing press", "the pendulum clock", "the steam pump", "the compass",
          "the telegraph", "the suspension bridge", "the glass lens", "the loom", "the windmill", "the canal lock",
          "the barometer", "the sewing machine", "the bicycle", "the refrigerator", "the radio receiver"]
ANIMALS = ["the red fox", "the barn owl", "the grey heron", "the river otter", "the honey bee", "the common frog",
           "the mountain goat", "the snow leopard", "the sea turtle", "the monarch butterfly", "the beaver",
           "the hedgehog", "the albatross", "the octopus"]
CONCEPTS = ["erosion", "photosynthesis", "inflation", "plate tectonics", "natural selection", "entropy",
            "supply and demand", "the water cycle", "magnetism", "fermentation", "crop rotation", "tidal forces"]
CENTURIES = ["twelfth", "fourteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth", "early twentieth"]
PEOPLE = ["merchants", "farmers", "monks", "engineers", "sailors", "weavers", "teachers", "surveyors", "miners",
          "physicians", "clockmakers", "fishermen"]

PROSE = [
    "{P} was settled by {pe} in the {c} century. Its economy depended on {t}, which remained in use for generations"
    " and shaped the layout of the streets that survive today.",
    "{A} lives mostly in {P}, where it feeds at dawn and dusk. Its numbers fell sharply during the {c} century but"
    " have recovered since its habitat was protected.",
    "The idea of {k} was first described in a systematic way by scholars in the {c} century. Earlier writers had"
    " noticed its effects, but they lacked the measurements needed to explain them.",
    "Historians disagree about who invented {t}. Records from {P} suggest that {pe} were using an early version"
    " of it long before the first written description appeared.",
    "In the {c} century, {pe} from {P} travelled widely, carrying news, tools and ideas. Their letters remain an"
    " important source for anyone studying daily life in that period.",
    "{k} explains many features of {P}. Over long periods, small effects add up, and the landscape that results"
    " can look as if it had been designed rather than grown.",
    "Unlike most of its relatives, {A} is active during the winter. It survives the cold by storing food in autumn"
    " and by sheltering in hollows that keep a steady temperature.",
    "The arrival of {t} changed the work of {pe}. Tasks that had taken a whole day could be finished in an hour,"
    " and the time saved was spent on trade, study or rest.",
    "Visitors to {P} often remark on its quiet. Few roads cross it, and the nearest railway station lies more than"
    " a day's walk away, so most goods still arrive by cart or boat.",
    "A common misunderstanding about {k} is that it happens quickly. In fact, the process is slow and uneven, and"
    " its results are usually visible only when one compares records kept over many years.",
    "Scientists who study {A} have found that it can recognise individual members of its group. Young animals"
    " learn these distinctions during their first season and keep them for life.",
    "By the end of the {c} century, {t} had spread from {P} to most of the surrounding region, although local"
    " {pe} continued to build it in their own way and with their own materials.",
]

SITES = ["example-shop.net", "myblog.org", "forum.techhelp.io", "recipes.home", "citynews.local", "travelbits.com",
         "devnotes.dev", "gardenchat.net", "deals4u.biz", "fitlife.app"]
PRODUCTS = ["wireless earbuds", "standing desk", "cast iron pan", "hiking backpack", "robot vacuum", "e-reader",
            "electric kettle", "mechanical keyboard", "phone case", "yoga mat", "air fryer", "desk lamp"]
PROBLEMS = ["my laptop fan is always loud", "the wifi keeps dropping at night", "my sourdough won't rise",
            "tomato leaves are turning yellow", "the printer says offline", "my knees hurt after running",
            "the app crashes when I upload photos", "my bike chain keeps slipping", "the dishwasher smells",
            "python says module not found"]
DISHES = ["lemon garlic pasta", "three bean chili", "banana oat muffins", "chicken stir fry", "tomato soup",
          "spinach omelette", "apple crumble", "veggie curry", "pancakes", "potato salad"]
CITIES = ["Lisbon", "Kyoto", "Denver", "Tallinn", "Cape Town", "Oaxaca", "Hanoi", "Glasgow", "Montreal", "Perth"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

WEB = [
    "{s} | Review: {pr} - {n}/5 stars. Bought this last {m}, works great for the price!! battery lasts way longer"
    " than my old one. Only complaint: the box was damaged in shipping. Would buy again.",
    "Re: {q}\nHi all, tried restarting and updating everything, still no luck. Any ideas?? Posted {d} {m} - 14"
    " replies - last reply by user{u}",
    "HOME > Recipes > {di}\nPrep 15 min | Cook {k} min | Serves {n}\nJump to recipe. This {di} is my go-to on busy"
    " weeknights and honestly my kids ask for it every week. Scroll down for tips & substitutions!",
    "BREAKING: {ci} city council votes {n}-{n2} to expand bike lanes downtown. Construction expected to begin in"
    " {m}. Read more at {s} >> Share on social | {u} comments",
    "Top {n} things to do in {ci} (updated {m} 2024) - 1. Walk the old town early before the crowds 2. Try the"
    " street food market 3. Take the ferry at sunset. Click here for our free printable guide!",
    "SALE ends tonight! {pr} now only ${p}.99 (was ${p2}.99). Free shipping on orders over $35. Use code SAVE{n}"
    " at checkout. *Terms apply. Subscribe to our newsletter for more deals.",
    "Q: {q} - what should I do?\nA: Usually it's something simple. First check the settings, then clear the cache."
    " If that doesn't work, post your logs and we'll take a look. Was this answer helpful? Yes / No",
    "v{n}.{k}.{u} release notes: fixed a crash on startup when the config file is missing; improved sync speed;"
    " dark mode now follows the system setting. Download from {s}/releases",
    "Posted by gardener_{u} on {d} {m}: Finally got my first harvest of the year!! The raised beds were totally"
    " worth it. Next up: trying {di} with fresh herbs. Pics in comments :)",
    "Cookies help us deliver our services. By using {s} you agree to our use of cookies. Learn more | OK. Sign in"
    " | Create account | Cart ({n}) | Search for {pr}...",
    "{ci} weather this week: Mon {t}C sunny, Tue {t2}C cloudy, Wed rain likely. Pack an umbrella if you're heading"
    " out! Full forecast on {s}. Follow us for live updates.",
    "Just finished a {k} minute workout with my new {pr}. Honestly game changer. Not sponsored lol. Drop your"
    " favourite routines below and I'll try them next week #fitness #{m}",
]

NAMES = ["Maya", "Liam", "Sofia", "Noah", "Aisha", "Ethan", "Priya", "Lucas", "Chen", "Olivia", "Mateo", "Zara",
         "Jonas", "Amara", "Ravi", "Elena", "Tom", "Keiko", "Samir", "Grace"]

MATH = [
    ("{a} has {x} apples. She gives {y} to her friend and buys {z} more at the market. How many apples does {a}"
     " have now?"),
    ("A bakery sells muffins for ${x} each. On Monday it sold {y} muffins and on Tuesday {z} muffins. How much"
     " money did the bakery make on those two days?"),
    ("{a} reads {x} pages every day. How many days will it take {a} to finish a book with {xy} pages?"),
    ("There are {x} students in a class. Each student needs {y} pencils, and pencils come in boxes of {z}. How"
     " many boxes does the teacher need to buy?"),
    ("A train travels at {x} miles per hour for {y} hours and then at {z} miles per hour for 2 more hours. How far"
     " does the train travel in total?"),
    ("{a} earns ${x} per hour and works {y} hours a week. After {z} weeks, how much has {a} earned?"),
    ("A garden has {x} rows of carrots with {y} carrots in each row. Rabbits eat {z} carrots. How many carrots are"
     " left?"),
    ("{a} and {b} share {xy} stickers equally. Then {a} buys {z} more stickers. How many stickers does {a} have"
     " now?"),
    ("A shirt costs ${x}. It is on sale for {p} percent off. What is the sale price of the shirt?"),
    ("{a} is {x} years old. {b} is {y} years older than {a}. How old will {b} be in {z} years?"),
    ("A tank holds {xy} liters of water. It drains at {x} liters per minute. How many minutes until the tank is"
     " empty?"),
    ("{a} bought {x} notebooks for ${y} each and a backpack for ${z}. {a} paid with a $200 bill. How much change"
     " did {a} get?"),
    ("A farmer has {x} chickens and {y} cows. How many legs do the animals have altogether?"),
    ("{a} runs {x} kilometers on weekdays and {y} kilometers on each day of the weekend. How many kilometers does"
     " {a} run in {z} weeks?"),
    ("A pizza is cut into {x} slices. {a} eats {y} slices and {b} eats {z} slices. What fraction of the pizza is"
     " left?"),
    ("A library had {xy} books. It lent out {x} books on Saturday and received {y} returned books on Sunday. How"
     " many books are in the library now?"),
]


def _prose(r: random.Random) -> str:
    return r.choice(PROSE).format(P=r.choice(PLACES), pe=r.choice(PEOPLE), c=r.choice(CENTURIES), t=r.choice(THINGS),
                                  A=r.choice(ANIMALS), k=r.choice(CONCEPTS))


def _web(r: random.Random) -> str:
    return r.choice(WEB).format(s=r.choice(SITES), pr=r.choice(PRODUCTS), n=r.randint(2, 9), n2=r.randint(0, 4),
                                m=r.choice(MONTHS), q=r.choice(PROBLEMS), d=r.randint(1, 28), u=r.randint(3, 999),
                                di=r.choice(DISHES), k=r.randint(10, 60), ci=r.choice(CITIES), p=r.randint(19, 89),
                                p2=r.randint(90, 199), t=r.randint(-3, 31), t2=r.randint(-3, 31))


def _math(r: random.Random) -> str:
    x, y, z = r.randint(3, 15), r.randint(2, 12), r.randint(2, 9)
    a, b = r.sample(NAMES, 2)
    return r.choice(MATH).format(a=a, b=b, x=x, y=y, z=z, xy=x * y * 2, p=r.choice([10, 20, 25, 30, 50]))


def _unique(fn, r, n):
    out, seen = [], set()
    while len(out) < n:
        text = fn(r)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def main():
    here = Path(__file__).parent
    r = random.Random(1234)
    prose = _unique(_prose, r, N_ITEMS)
    # Capitalize sentence starts produced by "the ..." slots at the start of a template.
    prose = [t[0].upper() + t[1:] for t in prose]
    for name, items in (("prose", prose), ("web", _unique(_web, r, N_ITEMS)), ("math", _unique(_math, r, N_ITEMS))):
        # One input per line; a literal \n marks a newline inside an input (load_inputs turns it back).
        (here / f"{name}.txt").write_text("".join(t.replace("\n", "\\n") + "\n" for t in items), encoding="utf-8")


if __name__ == "__main__":
    main()
