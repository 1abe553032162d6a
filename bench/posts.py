"""
Generate the posts of a Hexo archive in the aggregator's shapes, deterministic from a seed.

Posts reference images through the cors.zfour.workers.dev wrapper the way each source of the blog
writes them (趣头条 ``data-size``, ZAKER ``data-original``/``data-gif-url`` twins with the height
first, 煎蛋 ``.jpg!custom`` and sinaimg, 掘金 ``.awebp?`` with a CSRF example inside ``<code>``,
PMCAFF ``coffee-w`` and whole articles in ``<pre>``, Dockone lightbox links, 开源中国 code,
人人都是产品经理 ``data-avatar`` and WeChat ``?wx_fmt=``, Markdown notes with fenced code, and
cnBeta controls with no wrapper). Each image lives on one of 20 origin hosts; the small image files
(see bench/pictures.py) are written by :func:`pictures.write_images`.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pictures import Picture, Pools, make_pools

WRAP = "https://cors.zfour.workers.dev/?"
# The real corpus (/work/shared/corpus, 25 posts): median and mean post size in bytes.
CORPUS_MEDIAN, CORPUS_MEAN = 4236, 5620
# Post size: log-normal with the corpus's median, sigma from its mean/median ratio.
SIZE_SIGMA = math.sqrt(2 * math.log(CORPUS_MEAN / CORPUS_MEDIAN))
IMAGES_PER_POST = (14, 20, 18, 14, 11, 9, 7, 7)  # weights for 1..8 images in the body
WRITES_IN_FLIGHT = 16  # chunks of 128 posts handed to the writer threads
YEARS = (2019, 2020, 2021, 2022, 2023)
# Shown inside <code> and fenced code only: never a reference. Port 8002 is refused anyway.
CSRF = f"{WRAP}http://www.a.com:8002/content/delete/87343"
CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过"
    "子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制"
    "机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正"
    "心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党"
)
WORDS = ("Kubernetes", "Presto", "Rust", "Go", "Python", "API", "GPU", "iPhone", "Linux", "5G")


def wrap(picture: Picture) -> str:
    """The wrapped URL as an HTML attribute writes it."""
    return (WRAP + picture.url).replace("&", "&amp;")


def _text(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        if rng.random() < 0.08:
            out.append(f" {rng.choice(WORDS)} {rng.randint(2, 2048)} ")
        start = rng.randrange(len(CHARS) - 24)
        out.append(CHARS[start : start + rng.randint(4, 24)])
    return "，".join(out) + "。"


@dataclass(slots=True)
class Writer:
    """Renders posts: a paragraph pool made once, then per post a few cheap choices."""

    rng: random.Random
    pools: Pools
    paragraphs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.paragraphs = [_text(self.rng, self.rng.randint(3, 14)) for _ in range(4096)]

    def paras(self, nbytes: int) -> list[str]:
        """Paragraph texts adding up to about ``nbytes`` of UTF-8."""
        out: list[str] = []
        total = 0
        for _ in range(2000):  # bounded: a paragraph is at least ~30 bytes
            if total >= nbytes:
                break
            text = self.rng.choice(self.paragraphs)
            out.append(text)
            total += len(text) * 3
        return out or [self.paragraphs[0]]


Render = Callable[[Writer, list[Picture], list[str]], str]


def _spread(parts: list[str], blocks: list[str]) -> list[str]:
    """Interleave image blocks evenly among text parts."""
    out: list[str] = []
    step = max(1, len(parts) // (len(blocks) + 1))
    queue = list(blocks)
    for i, part in enumerate(parts):
        out.append(part)
        if queue and (i + 1) % step == 0:
            out.append(queue.pop(0))
    return out + queue


def qtt(w: Writer, pics: list[Picture], text: list[str]) -> str:
    imgs = [
        f'<p><img src="{wrap(p)}" data-size="{p.declared[0]},{p.declared[1]}" '
        'referrerpolicy="no-referrer"></p>'
        for p in pics
    ]
    return "".join(_spread([f"<p> {t}</p>" for t in text], imgs))


def zaker(w: Writer, pics: list[Picture], text: list[str]) -> str:
    imgs = []
    for n, p in enumerate(pics):
        gif = n % 3 == 0
        twin = f' data-gif-url="{p.url.replace("_1024.jpg", "_raw.gif")}"' if gif else ""
        imgs.append(
            f'<p></p><div class="img_box" id="id_imagebox_{n}" onclick>'
            f'<div class="content_img_div"><img class="lazy opacity_0 '
            f'{"zaker_gif_cache" if gif else ""}" id="img_{n}" data-original="{p.url}"{twin} '
            f'data-height="{p.declared[1]}" data-width="{p.declared[0]}" src="{wrap(p)}" '
            'referrerpolicy="no-referrer"></div></div>'
            f"{w.rng.choice(w.paragraphs)[:40]}<p></p>"
        )
    return "".join(_spread([f"<p>{t}</p>" for t in text], imgs))


def jandan(w: Writer, pics: list[Picture], text: list[str]) -> str:
    imgs = []
    for p in pics:
        alt = f' alt="{text[0][:20]}"' if "sinaimg" in p.host else ""
        imgs.append(f'<img src="{wrap(p)}"{alt} referrerpolicy="no-referrer">')
    body = _spread([f"<p>{t}</p>\n" for t in text[1:]] or ["<p></p>\n"], imgs)
    return f"<blockquote><p>{text[0]}</p></blockquote>" + "".join(body)


JUEJIN_STYLE = (
    '<div class="markdown-body cache"><style>.markdown-body&#123;word-break:break-word;'
    "line-height:1.75;font-size:16px;color:#333&#125;.markdown-body pre>code&#123;"
    "font-size:12px;padding:15px 12px;display:block;overflow-x:auto&#125;</style>"
)


def juejin(w: Writer, pics: list[Picture], text: list[str]) -> str:
    imgs = [
        f'<div data-type="transform-warn" data-index="{n}"> \n<p><img src="{wrap(p)}" '
        'alt="image" loading="lazy" referrerpolicy="no-referrer"></p>\n</div>\n'
        for n, p in enumerate(pics)
    ]
    parts = [f"<p>{t}</p>\n" for t in text]
    parts.insert(
        len(parts) // 2,
        '<pre><code class="hljs language-java">public &lt;T&gt; List&lt;T&gt; take(int n) '
        "&#123;\n    return items.subList(0, n);\n&#125;\n</code></pre>\n",
    )
    if w.rng.random() < 0.2:
        parts.append(f'<p>CSRF 示例：<code><img src="{CSRF}"></code></p>\n')
    return JUEJIN_STYLE + "".join(_spread(parts, imgs)) + "</div>  "


def pmcaff(w: Writer, pics: list[Picture], text: list[str]) -> str:
    imgs = []
    for p in pics:
        cw, ch = f"{p.declared[0]}px", f"{p.declared[1]}px"
        if w.rng.random() < 0.1:
            cw = ch = "nullpx"  # PMCAFF writes this when it does not know
        fmt = p.fmt.lower()
        imgs.append(
            f'<p style="text-align:justify;"><img src="{wrap(p)}" alt="{p.path[1:33]}-picture" '
            f'coffee-w="{cw}" coffee-h="{ch}" coffee-format="{fmt}" '
            'referrerpolicy="no-referrer"></p>'
        )
    body = "".join(_spread([f'<p style="text-align:justify;">{t}</p>' for t in text], imgs))
    if w.rng.random() < 0.5:  # whole article in <pre>, blank lines included
        body = body.replace("</p><p", "</p>\n\n<p", 2)
        return f"<div><pre>\n{body}\n</pre></div>"
    return (
        f"<div><style>\n#articleCont img &#123;\n  max-width: 100%;\n&#125;\n</style>{body}</div>"
    )


def dockone(w: Writer, pics: list[Picture], text: list[str]) -> str:
    imgs = [
        f'<br><div class="aw-upload-img-list active">\n<a href="{p.url}" target="_blank" '
        f'data-fancybox-group="thumb" rel="lightbox"><img src="{wrap(p)}" class="img-polaroid" '
        f'title="{n}.png" alt="{n}.png" referrerpolicy="no-referrer"></a>\n</div>\n<br>\n'
        for n, p in enumerate(pics)
    ]
    return "".join(_spread([f"<br>{t}<br>\n" for t in text], imgs))


def oschina(w: Writer, pics: list[Picture], text: list[str]) -> str:
    imgs = [
        f'<p><img alt="{n}.png" src="{wrap(p)}" referrerpolicy="no-referrer"></p> \n'
        for n, p in enumerate(pics)
    ]
    parts = [f"<p>{t}</p> \n" for t in text]
    parts.insert(1, "<pre><code>piano:\n  o3\n  g8 a b > c d e f+ g | a b > c d e f+ g4\n"
                    "  &lt;&lt; g1/&gt;g/&gt;g/b/&gt;d/g</code></pre> \n")  # fmt: skip
    items = "".join(f" <li>{t[:60]}<code>alda up</code></li> \n" for t in text[:3])
    body = "".join(_spread(parts, imgs))
    return f'<div class="content">\n{" " * 60}\n{body}<ul> \n{items}</ul> \n</div>\n{" " * 40}'


def woshipm(w: Writer, pics: list[Picture], text: list[str]) -> str:
    avatar, rest = pics[0], pics[1:]
    imgs = [
        f'<p><img src="{wrap(p)}" alt="" width="{p.size[0]}" height="{p.size[1]}" '
        'referrerpolicy="no-referrer"></p>'
        for p in rest
    ]
    head = f'<div class="author-info" data-avatar="{wrap(avatar)}"><span>作者</span></div>'
    return head + "".join(_spread([f"<p>{t}</p>" for t in text], imgs))


def notes(w: Writer, pics: list[Picture], text: list[str]) -> str:
    """A post written in Markdown: paragraphs, images, fenced and indented code."""
    imgs = [f"![图{n}]({WRAP}{p.url})\n" for n, p in enumerate(pics)]
    parts = [f"{t}\n" for t in text]
    parts.insert(1, f'```html\n<img src="{CSRF}">\n```\n')
    parts.insert(2, "    $ hexo generate --watch\n    $ `npm run build`\n")
    parts.append(f"- 列表项 `{CSRF}`\n- 第二项\n")
    return "\n".join(_spread(parts, imgs))


def cnbeta(w: Writer, pics: list[Picture], text: list[str]) -> str:
    """A control: raw images only, nothing may change."""
    imgs = [f'<p><img src="{p.url}" referrerpolicy="no-referrer"></p>' for p in pics]
    return "<br>\n".join(_spread([f"<p>{t}</p>" for t in text], imgs))


@dataclass(frozen=True, slots=True)
class Source:
    """One site the aggregator copies: where its posts go, its share, hosts and rendering."""

    name: str
    folder: str
    share: int
    hosts: tuple[str, ...]
    render: Render


SOURCES = (
    Source("趣头条", "新媒体/趣头条/分类", 24, ("static.1sapp.com",), qtt),
    Source(
        "ZAKER", "新媒体/ZAKER/channel", 18, ("zkres1.myzaker.com", "zkres2.myzaker.com"), zaker
    ),
    Source(
        "煎蛋",
        "图片/煎蛋/首页",
        14,
        ("img.jandan.net", "ww1.sinaimg.cn", "tva1.sinaimg.cn", "wx4.sinaimg.cn"),
        jandan,
    ),
    Source(
        "掘金",
        "编程/掘金/标签",
        10,
        tuple(f"p{n}-juejin.byteimg.com" for n in (1, 3, 6, 9)),
        juejin,
    ),
    Source("PMCAFF", "新媒体/PMCAFF/今日推荐 / 精选", 6, ("img.pmcaff.com",), pmcaff),
    Source("Dockone", "编程/Dockone/周报", 6, ("dockone.io",), dockone),
    Source(
        "开源中国", "编程/开源中国/资讯", 7, ("static.oschina.net", "oscimg.oschina.net"), oschina
    ),
    Source(
        "人人都是产品经理",
        "新媒体/人人都是产品经理/热门",
        5,
        ("image.woshipm.com", "mmbiz.qpic.cn"),
        woshipm,
    ),
    Source(
        "笔记",
        "随笔/笔记/技术",
        5,
        ("upload-images.jianshu.io", "i.loli.net", "pic1.zhimg.com"),
        notes,
    ),
    Source("cnBeta", "新媒体/cnBeta/最新", 5, (), cnbeta),
)
# Every origin host, for --connect-to; cnBeta's raw images are never fetched.
HOSTS = tuple(h for s in SOURCES for h in s.hosts)


def _raw_picture(rng: random.Random) -> Picture:
    name = f"{rng.getrandbits(60):015x}"
    size = (rng.randint(300, 900), rng.randint(200, 700))
    return Picture("static.cnbetacdn.com", f"/article/2022/0517/{name}.png", "PNG", size, size)


def front_matter(source: Source, title: str, head: str, date: datetime) -> str:
    categories = "".join(f" - {c}\n" for c in source.folder.split("/", 2))
    when = (
        date.strftime("%Y-%m-%d %H:%M:%S")
        if source.name == "Dockone"
        else email.utils.format_datetime(date, usegmt=True)
    )
    return (
        f"\n---\ntitle: '{title}'\ncategories: \n{categories}headimg: '{head}'\n"
        f"author: {source.name}\ncomments: false\ndate: {when}\nthumbnail: '{head}'\n---\n\n"
    )


@dataclass(slots=True)
class Generated:
    """What was written: post sizes, folder sizes (for sharding), images used."""

    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    folders: dict[str, int] = field(default_factory=dict)
    pictures: list[Picture] = field(default_factory=list)


def _post(writer: Writer, rng: random.Random, source: Source, n: int) -> tuple[str, str]:
    """Render post ``n`` of ``source``; return (relative path, text)."""
    target = min(64_000, max(1_200, round(rng.lognormvariate(math.log(CORPUS_MEDIAN), SIZE_SIGMA))))
    count = rng.choices(range(1, 9), IMAGES_PER_POST)[0]
    taken: set[str] = set()
    pics = []
    for _ in range(count):
        if source.hosts:
            pic = writer.pools.pick(rng, rng.choice(source.hosts), taken)
        else:
            pic = _raw_picture(rng)
        taken.add(pic.url)
        pics.append(pic)
    # Front matter and closing markup take ~1 KB (a paragraph overshoots), each image ~250 B.
    text = writer.paras(target - 1000 - 250 * count)
    title = text[0][: rng.randint(12, 30)].strip(" ，").replace("/", "／")
    year = YEARS[n % len(YEARS)]
    date = datetime(year, 1 + rng.randrange(12), 1 + rng.randrange(28), rng.randrange(24),
                    rng.randrange(60), rng.randrange(60), tzinfo=UTC)  # fmt: skip
    head = pics[0].url if not source.hosts else WRAP + pics[0].url
    body = source.render(writer, pics, text)
    if source.render is notes:
        post = front_matter(source, title, head, date) + body + "\n"
    else:
        post = front_matter(source, title, head, date) + f"<div>   \n{body}\n</div>\n            "
    return f"{source.folder}/{year}/{title}-{n:06d}.md", post


def _write_files(files: list[tuple[str, bytes]]) -> None:
    for path, data in files:
        with open(path, "wb") as f:  # noqa: PTH123  # a plain open: the cheapest create
            f.write(data)


def generate_posts(root: Path, posts: int, images: int, seed: int) -> Generated:
    """
    Write ``posts`` posts under ``root`` (plain writes, no fsync); return what was written.

    Creating a file costs 0.1-1 ms on some virtual disks, mostly waiting, so threads write while
    this one renders; at most ``WRITES_IN_FLIGHT`` chunks of posts are held in memory.
    """
    rng = random.Random(seed)
    weights = {h: s.share / len(s.hosts) for s in SOURCES for h in s.hosts}
    writer = Writer(random.Random(f"{seed}-text"), make_pools(seed, images, weights))
    shares = [s.share for s in SOURCES]
    out = Generated()
    made: set[str] = set()
    chunk: list[tuple[str, bytes]] = []
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(8) as pool:
        for n in range(posts):
            source = rng.choices(SOURCES, shares)[0]
            rel, text = _post(writer, rng, source, n)
            data = text.encode("utf-8")
            folder = rel.rsplit("/", 1)[0]
            if folder not in made:
                (root / folder).mkdir(parents=True, exist_ok=True)
                made.add(folder)
            chunk.append((f"{root}/{rel}", data))
            if len(chunk) == 128 or n == posts - 1:
                pending.append(pool.submit(_write_files, chunk))
                chunk = []
            while len(pending) > WRITES_IN_FLIGHT or (pending and n == posts - 1):
                pending.popleft().result()
            out.paths.append(rel)
            out.sizes.append(len(data))
            out.folders[folder] = out.folders.get(folder, 0) + len(data)
    out.pictures = sorted(writer.pools.used.values(), key=lambda p: p.file)
    return out
