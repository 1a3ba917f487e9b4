"""Writes the synthetic provider emails of the golden corpus (tests/corpus/synthetic/*.eml + *.json).

The expectations below are written by hand, from the issue and provider_urls.md, not produced by the code under
test. Every token is fake (SYNTH vectors: aaaa…/0000…); no link here points to real content, and nothing is fetched.
Run from the repository root: ``.venv/bin/python tests/corpus/make_synthetic.py``.
"""

from __future__ import annotations

import base64
import json
import quopri
from pathlib import Path

OUT = Path(__file__).resolve().parent / "synthetic"

DBX_FI = ("https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/Project%20Files.zip"
          "?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&st=cccccccc&dl=0")
DBX_FI_DIRECT = ("https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/Project%20Files.zip"
                 "?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&st=cccccccc&dl=1")
DBX_LOGO = "https://www.dropbox.com/scl/fi/zzzzzzzzzzzzzzzzzzzzz/logo.png?rlkey=yyyyyyyyyyyyyyyyyyyyyyyyy&raw=1"
DBX_AVATAR = "https://www.dropbox.com/s/xxxxxxxxxxxxxxx/avatar.jpg?raw=1"
DBX_FO = "https://www.dropbox.com/scl/fo/aaaaaaaaaaaaaaaaaaaaa/AAAAAAAAAAAAAAAAAAAAAAA?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&dl=0"
DBX_FO_DIRECT = ("https://www.dropbox.com/scl/fo/aaaaaaaaaaaaaaaaaaaaa/AAAAAAAAAAAAAAAAAAAAAAA"
                 "?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&dl=1")
DBX_FO_H = "https://www.dropbox.com/scl/fo/ddddddddddddddddddddd/h?dl=0&rlkey=eeeeeeeeeeeeeeeeeeeeeeeee"
DBX_FO_H_DIRECT = "https://www.dropbox.com/scl/fo/ddddddddddddddddddddd/h?rlkey=eeeeeeeeeeeeeeeeeeeeeeeee&dl=1"
DBX_S = "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/render_final.mov?dl=0"
DBX_S_DIRECT = "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/render_final.mov?dl=1"
DBX_REQUEST = "https://www.dropbox.com/request/AAAAAAAAAAAAAAAAAAAA"
WT_LONG = ("https://wetransfer.com/downloads/0000000000000000000000000000000020250101120000/"
           "1111111111111111111111111111111120250101120001/abcdef")
WT_SHORT = "https://we.tl/t-AAAAAAAAAA"
ST_V1 = "https://www.swisstransfer.com/d/00000000-0000-4000-8000-000000000000"
ST_V2 = "https://swisstransfer.infomaniak.com/dl/01900000-0000-7000-8000-000000000000"
ST_DELETE = "https://www.swisstransfer.com/d/00000000-0000-4000-8000-000000000000?delete=ffffffff"
SMASH = "https://fromsmash.com/AAAAAAAAAA-dt"
SMASH_TEAM = "https://acme.fromsmash.com/quarterly-rushes"


def link(provider: str, raw: str, direct: str | None = None) -> dict:
    return {"provider": provider, "raw_url": raw, "direct_url": direct or raw}


def headers(subject_header: str, sender: str, message_id: str, extra: str = "") -> str:
    return (f"From: {sender}\r\nTo: inbox@example.com\r\nSubject: {subject_header}\r\n"
            f"Date: Tue, 03 Jun 2025 10:00:00 +0200\r\nMessage-ID: <{message_id}>\r\nMIME-Version: 1.0\r\n{extra}")


def alternative(plain: str, html: str, *, html_cte: str = "quoted-printable", charset: str = "utf-8") -> str:
    def encode(text: str, cte: str) -> str:
        data = text.encode(charset)
        if cte == "base64":
            return base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")
        return quopri.encodestring(data).decode("ascii").replace("\n", "\r\n")

    return ("Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
            f"--b1\r\nContent-Type: text/plain; charset={charset}\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            f"{encode(plain, 'quoted-printable')}\r\n"
            f"--b1\r\nContent-Type: text/html; charset={charset}\r\nContent-Transfer-Encoding: {html_cte}\r\n\r\n"
            f"{encode(html, html_cte)}\r\n--b1--\r\n")


CASES: dict[str, tuple[bytes, dict]] = {}


def case(name: str, raw: str | bytes, *, subject: str, sender_email: str, links: list[dict],
         html_truncated: bool = False, text_truncated: bool = False) -> None:
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    CASES[name] = (data, {"subject": subject, "sender_email": sender_email, "links": links,
                          "html_truncated": html_truncated, "text_truncated": text_truncated})


# 1. A Dropbox notification: the logo and the avatar are images, the file link is the delivery (with &amp;).
html = (f'<html><body><img src="{DBX_LOGO.replace("&", "&amp;")}" alt="Dropbox">'
        f'<a href="{DBX_LOGO.replace("&", "&amp;")}"><img src="x"></a>'
        f'<p><a href="{DBX_AVATAR}"><img src="{DBX_AVATAR}"></a> Jane shared a file with you</p>'
        f'<p><a href="{DBX_FI.replace("&", "&amp;")}">Project Files.zip</a></p></body></html>')
case("dropbox_scl_fi_notification",
     headers("=?utf-8?q?Jane_shared_=C2=AB_Project_Files.zip_=C2=BB_with_you?=", '"Jane Doe" <jane@example.com>',
             "dbx-1@example.com") + alternative(f"Jane shared a file with you.\n\nView: {DBX_FI}\n", html),
     subject="Jane shared « Project Files.zip » with you", sender_email="jane@example.com",
     links=[link("dropbox", DBX_FI, DBX_FI_DIRECT)])

# 2. A Dropbox folder (new /scl/fo/ form) and the older /h form with dl before rlkey, in plain text.
case("dropbox_scl_fo_folder",
     headers("Folder for review", "Studio <Studio@Example.COM>", "dbx-2@example.com")
     + "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
     + f"Hi,\r\n\r\nthe folder: {DBX_FO}\r\nand the old one <{DBX_FO_H}>.\r\n",
     subject="Folder for review", sender_email="studio@example.com",
     links=[link("dropbox", DBX_FO, DBX_FO_DIRECT), link("dropbox", DBX_FO_H, DBX_FO_H_DIRECT)])

# 3. Legacy /s/ link and a file request; the same /s/ link twice (with and without dl=0) counts once.
case("dropbox_s_and_request",
     headers("Files + upload request", "ops@example.org", "dbx-3@example.com")
     + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
     + f"Render: {DBX_S}\r\nSame: https://www.dropbox.com/s/aaaaaaaaaaaaaaa/render_final.mov\r\n"
       f"Upload yours here: {DBX_REQUEST}\r\n",
     subject="Files + upload request", sender_email="ops@example.org",
     links=[link("dropbox", DBX_S, DBX_S_DIRECT), link("dropbox", DBX_REQUEST)])

# 4. WeTransfer: the anchor has utm parameters; the text has the short link; tracking and CDN links are not links.
wt_href = WT_LONG + "?utm_campaign=WT_email_tracking&utm_source=notify_recipient_email&trk=TRN_TDL_05"
html = (f'<html><body><img src="https://prod-cdn.wetransfer.net/assets/logo.png">'
        f'<a href="http://email.wetransfer.com/wf/click?upn=AAAA">Open</a>'
        f'<p>You received files</p><a href="{wt_href.replace("&", "&amp;")}">Get your files</a>'
        f'<img src="http://email.wetransfer.com/wf/open?upn=BBBB"></body></html>')
case("wetransfer_notification",
     headers("=?UTF-8?B?Sm9obiBzZW50IHlvdSBmaWxlcyB2aWEgV2VUcmFuc2Zlcg==?=",
             "WeTransfer <noreply@wetransfer.com>", "wt-1@example.com")
     + alternative(f"Get your files: {WT_SHORT}\n", html, html_cte="base64"),
     subject="John sent you files via WeTransfer", sender_email="noreply@wetransfer.com",
     links=[link("wetransfer", wt_href), link("wetransfer", WT_SHORT)])

# 5. SwissTransfer v1 and v2 links; the delete link is not a delivery.
case("swisstransfer_links",
     headers("SwissTransfer", "Bob <bob@example.ch>", "st-1@example.com")
     + "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
     + "Voil=E0 les fichiers : " + ST_V1 + "\r\nNouveau lien " + ST_V2 + "\r\n"
     + "Pour supprimer : " + ST_DELETE.replace("=", "=3D") + "\r\n",
     subject="SwissTransfer", sender_email="bob@example.ch",
     links=[link("swisstransfer", ST_V1), link("swisstransfer", ST_V2)])

# 6. Smash: the -dt link and a team subdomain custom slug; the site's /pricing page is not a transfer.
case("fromsmash_links",
     headers("Smash", "smash@example.net", "smash-1@example.com")
     + "Content-Type: text/html; charset=utf-8\r\n\r\n"
     + f'<p><a href="{SMASH}">Download</a> - <a href="https://fromsmash.com/pricing">Go Pro</a> - '
       f'<a href="{SMASH_TEAM}/">Rushes</a></p>\r\n',
     subject="Smash", sender_email="smash@example.net",
     links=[link("fromsmash", SMASH), link("fromsmash", SMASH_TEAM + "/")])

# 7. Outlook SafeLinks wrapping (HTML anchor and the text part).
from urllib.parse import quote  # noqa: E402 - imported where the SafeLinks cases that need it begin

safe = ("https://eur02.safelinks.protection.outlook.com/?url=" + quote(DBX_FI, safe="")
        + "&data=05%7C02%7Cinbox%40example.com%7C0000&sdata=AAAA%3D&reserved=0")
case("safelinks_outlook",
     headers("RE: render", "Carol <carol@example.com>", "safe-1@example.com")
     + alternative(f"Link: <{safe}>\n", f'<div><a href="{safe.replace("&", "&amp;")}" originalsrc="x">here</a></div>'),
     subject="RE: render", sender_email="carol@example.com",
     links=[link("dropbox", DBX_FI, DBX_FI_DIRECT)])

# 8. Gmail's google.com/url?q= redirect around a WeTransfer link.
gmail = "https://www.google.com/url?q=" + quote(WT_LONG, safe="") + "&source=gmail&ust=1651225508544000&usg=AOvVaw1"
case("google_redirect",
     headers("Fwd: files", "dave@example.com", "g-1@example.com")
     + "Content-Type: text/html; charset=utf-8\r\n\r\n" + f'<a href="{gmail.replace("&", "&amp;")}">files</a>\r\n',
     subject="Fwd: files", sender_email="dave@example.com", links=[link("wetransfer", WT_LONG)])

# 9. Quoted-printable soft line breaks (and =3D) inside a long Dropbox URL.
qp_body = quopri.encodestring(f"Here it is:\n{DBX_FI}\nbye\n".encode()).decode().replace("\n", "\r\n")
assert "=\r\n" in qp_body
case("qp_soft_breaks",
     headers("QP", "eve@example.com", "qp-1@example.com")
     + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + qp_body,
     subject="QP", sender_email="eve@example.com", links=[link("dropbox", DBX_FI, DBX_FI_DIRECT)])

# 10. Look-alike hosts are not providers.
case("lookalike_hosts",
     headers("Your files (not really)", "phish@example.com", "ph-1@example.com")
     + "Content-Type: text/html; charset=utf-8\r\n\r\n"
     + '<a href="https://dropbox.com.evil.example/s/aaaaaaaaaaaaaaa/x.zip">1</a>'
       '<a href="https://wetransfer.com.attacker.example/downloads/aaaa/bbbb">2</a>'
       '<a href="https://evilwe.tl/t-AAAAAAAAAA">3</a><a href="https://notfromsmash.com/AAAAAAAAAA-dt">4</a>'
       '<a href="https://www.dropbox.com@evil.example/s/aaaaaaaaaaaaaaa/x.zip">5</a>'
       '<a href="https://evil.example/?u=https://www.dropbox.com/s/aaaaaaaaaaaaaaa/x.zip">6</a>\r\n',
     subject="Your files (not really)", sender_email="phish@example.com", links=[])

# 11. Punctuation, quotes and brackets around URLs in running text.
case("punctuation_around_urls",
     headers("Links in prose", "frank@example.com", "pu-1@example.com")
     + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
     + f"See ({DBX_S}). Or \"{WT_SHORT}\", or [{SMASH}]; also {ST_V1}...\r\n",
     subject="Links in prose", sender_email="frank@example.com",
     links=[link("dropbox", DBX_S, DBX_S_DIRECT), link("wetransfer", WT_SHORT), link("fromsmash", SMASH),
            link("swisstransfer", ST_V1)])

# 12. HTML over the 1 MB cap (base64): the link before the cut is found, the one after it is lost.
filler = "<p>" + "é" * 600_000 + "</p>"  # 1.2 MB of UTF-8
big_html = f'<html><body><a href="{WT_SHORT}">before</a>{filler}<a href="{SMASH}">after</a></body></html>'
case("html_over_cap",
     headers("Big newsletter", "news@example.com", "big-1@example.com")
     + "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
     + base64.encodebytes(big_html.encode()).decode().replace("\n", "\r\n"),
     subject="Big newsletter", sender_email="news@example.com", links=[link("wetransfer", WT_SHORT)],
     html_truncated=True)

# 13. Mislabelled charset: declared us-ascii, actually UTF-8; raw 8-bit UTF-8 in the Subject.
case("mislabelled_charset",
     b"From: =?iso-8859-1?q?Ren=E9?= <rene@example.fr>\r\nSubject: Fichiers pr\xc3\xaats\r\n"
     b"Message-ID: <cs-1@example.com>\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
     b"Les fichiers sont pr\xc3\xaats: " + WT_SHORT.encode() + b"\r\n",
     subject="Fichiers prêts", sender_email="rene@example.fr", links=[link("wetransfer", WT_SHORT)])

# 14. A forwarded notification attached as message/rfc822, plus a PDF attachment (never decoded as text).
inner = (headers("Files", "WeTransfer <noreply@wetransfer.com>", "inner@example.com")
         + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + f"Download: {WT_LONG}\r\n")
case("forwarded_rfc822",
     headers("Fwd: Files", "gina@example.com", "fw-1@example.com")
     + "Content-Type: multipart/mixed; boundary=\"m1\"\r\n\r\n"
     + "--m1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"
     + "--m1\r\nContent-Type: message/rfc822\r\n\r\n" + inner + "\r\n"
     + "--m1\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n"
     + "Content-Disposition: attachment; filename=\"a.pdf\"\r\n"
       "Content-Transfer-Encoding: base64\r\n\r\n"
     + base64.encodebytes(f"%PDF-1.4 {DBX_S}".encode()).decode().replace("\n", "\r\n")
     + "--m1--\r\n",
     subject="Fwd: Files", sender_email="gina@example.com", links=[link("wetransfer", WT_LONG)])

# --- issue 19: the new providers and Dropbox shapes (URL shapes from provider_urls.md; every token is fake) --------

GD_ID = "1AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
GD_FILE = f"https://drive.google.com/file/d/{GD_ID}/view?usp=sharing_eil_m&ts=65a1b2c3"
GD_FILE_DIRECT = f"https://drive.google.com/uc?id={GD_ID}&export=download"
GD_SHEET = "https://docs.google.com/spreadsheets/d/1BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB/edit?usp=sharing"
GD_FOLDER = "https://drive.google.com/drive/folders/1CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC?usp=sharing"
GD_LEGACY_UC = "https://docs.google.com/uc?id=0BDDDDDDDDDDDDDDDDDDDDDDDDDD&export=download"
GD_USERCONTENT = f"https://drive.usercontent.google.com/download?id={GD_ID}&export=download"
OD_SHORT = "https://1drv.ms/u/s!AAAAAAAAAAAAAAAAAAAAAAAAAAAA"
OD_NEW = "https://1drv.ms/f/c/0123456789abcdef/AAAAAAAAAAAAAAAAAAAAAAA?e=AbCdEf"
OD_LONG = "https://onedrive.live.com/redir?resid=0123456789ABCDEF!123&authkey=!AAAAAAAAAAAA"
SP_PERSONAL = "https://contoso-my.sharepoint.com/:u:/g/personal/jane_contoso_com/EAAAAAAAAAAAAAAAAAAAAAAB?e=AbCdEf"
SP_SITE = "https://contoso.sharepoint.com/:f:/s/siteName/EBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB?e=kNrp5D"
BOX = "https://app.box.com/s/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
BOX_COMPANY = "https://acme.app.box.com/s/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
PCLOUD_US = "https://u.pcloud.link/publink/show?code=XZAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PCLOUD_EU = "https://e.pcloud.link/publink/show?code=XZBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
MEGA_FILE = "https://mega.nz/file/AAAAAAAA#BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
MEGA_FOLDER = "https://mega.nz/folder/CCCCCCCC#DDDDDDDDDDDDDDDDDDDDDD"
MEGA_LEGACY = "https://mega.nz/#!EEEEEEEE!FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
DBX_USERCONTENT = "https://dl.dropboxusercontent.com/s/aaaaaaaaaaaaaaa/render_final.mov"
DBX_USERCONTENT_DIRECT = "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/render_final.mov?dl=1"
DBX_NOTIFY = "https://www.dropbox.com/l/scl/AACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
DBX_TRANSFER = "https://www.dropbox.com/t/AAAAAAAAAAAAAAAA"

# 15. A Drive "shared with you" mail: the logo, a Drive image embedded inline, the open pixel, the help and home
# links are not links; the file link (direct form uc?export=download) and a Sheet in the text part are.
html = ('<html><body><img src="https://ssl.gstatic.com/docs/doclist/images/drive_2022q3_32dp.png" alt="Drive">'
        f'<p><img src="https://drive.google.com/uc?export=view&amp;id={GD_ID}" width="300"></p>'
        f'<p>Jane shared a file with you</p><a href="{GD_FILE.replace("&", "&amp;")}">Open</a>'
        '<a href="https://support.google.com/drive/answer/2494822">Help</a> '
        '<a href="https://drive.google.com/">Google Drive</a>'
        '<img src="https://notifications.googleapis.com/email/t/AFG8qyVAAAAA/image.gif" width="1" height="1">'
        '</body></html>')
case("gdrive_share_notification",
     headers("Jane shared \"brief.mov\" with you", '"Jane (via Google Drive)" <drive-shares-dm-noreply@google.com>',
             "gd-1@example.com")
     + alternative(f"Jane shared a file with you: {GD_FILE}\nThe budget: {GD_SHEET}\n", html),
     subject='Jane shared "brief.mov" with you', sender_email="drive-shares-dm-noreply@google.com",
     links=[link("gdrive", GD_FILE, GD_FILE_DIRECT), link("gdrive", GD_SHEET)])

# 16. A Drive folder and both download forms, in HTML with &amp; in the hrefs.
case("gdrive_folder_and_download_forms",
     headers("Rushes", "Ian <ian@example.com>", "gd-2@example.com")
     + "Content-Type: text/html; charset=utf-8\r\n\r\n"
     + f'<p><a href="{GD_FOLDER}">the folder</a>, <a href="{GD_LEGACY_UC.replace("&", "&amp;")}">the old file</a>, '
       f'<a href="{GD_USERCONTENT.replace("&", "&amp;")}">the new one</a></p>\r\n',
     subject="Rushes", sender_email="ian@example.com",
     links=[link("gdrive", GD_FOLDER), link("gdrive", GD_LEGACY_UC), link("gdrive", GD_USERCONTENT)])

# 17. OneDrive short (old and new form) and long links, SharePoint personal and site links; one SafeLinks-wrapped.
sp_safe = ("https://eur02.safelinks.protection.outlook.com/?url=" + quote(SP_SITE, safe="")
           + "&data=05%7C02%7Cinbox%40example.com%7C0000&sdata=AAAA%3D&reserved=0")
case("onedrive_sharepoint_links",
     headers("Deliverables", "Kim <kim@example.com>", "ms-1@example.com")
     + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
     + f"File: {OD_SHORT}\r\nFolder: {OD_NEW}\r\nOld link: {OD_LONG}\r\n"
       f"From work: {SP_PERSONAL}\r\nSite folder: <{sp_safe}>\r\n"
       "Help: https://support.microsoft.com/en-us/office/share-onedrive-files-and-folders-9fcc2f7d\r\n",
     subject="Deliverables", sender_email="kim@example.com",
     links=[link("onedrive", OD_SHORT), link("onedrive", OD_NEW), link("onedrive", OD_LONG),
            link("sharepoint", SP_PERSONAL), link("sharepoint", SP_SITE)])

# 18. Box shared links (app and company subdomain) and pCloud public links (US, EU); their home, login and help
# pages are not links.
case("box_pcloud_links",
     headers("Files", "Lee <lee@example.com>", "bp-1@example.com")
     + "Content-Type: text/html; charset=utf-8\r\n\r\n"
     + f'<a href="{BOX}">Box</a> <a href="{BOX_COMPANY}">Box (Acme)</a> <a href="https://www.box.com/">box.com</a> '
       '<a href="https://app.box.com/login">log in</a> <a href="https://app.box.com/folder/0">my files</a> '
       f'<a href="{PCLOUD_US}">pCloud</a> <a href="{PCLOUD_EU}">pCloud EU</a> '
       '<a href="https://www.pcloud.com/help/general-help-center.html">help</a>\r\n',
     subject="Files", sender_email="lee@example.com",
     links=[link("box", BOX), link("box", BOX_COMPANY), link("pcloud", PCLOUD_US), link("pcloud", PCLOUD_EU)])

# 19. MEGA file, folder and legacy links keep their key (the fragment); the home page and help are not links.
case("mega_links",
     headers("MEGA", "max@example.com", "mega-1@example.com")
     + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
     + f"{MEGA_FILE}\r\n{MEGA_FOLDER}\r\nold: {MEGA_LEGACY}\r\nhttps://mega.nz/ https://mega.nz/help\r\n",
     subject="MEGA", sender_email="max@example.com",
     links=[link("mega", MEGA_FILE), link("mega", MEGA_FOLDER), link("mega", MEGA_LEGACY)])

# 20. Dropbox: a notification's /l/ link (behind Gmail's redirect), a Transfer and the download host; the logo on
# dropboxstatic, the help centre and www.dropbox.com/help are not links.
dbx_gmail = "https://www.google.com/url?q=" + quote(DBX_NOTIFY, safe="") + "&source=gmail&ust=1651225508544000&usg=A"
case("dropbox_new_shapes",
     headers("Nina shared a file with you", "Dropbox <no-reply@dropbox.com>", "dbx-4@example.com")
     + "Content-Type: text/html; charset=utf-8\r\n\r\n"
     + '<img src="https://cfl.dropboxstatic.com/static/images/logo_catalog/dropbox_logo_glyph_2015_m1.png">'
       f'<a href="{dbx_gmail.replace("&", "&amp;")}">View file</a> <a href="{DBX_TRANSFER}">Transfer</a> '
       f'<a href="{DBX_USERCONTENT}">direct</a> <a href="https://help.dropbox.com/share/create-and-view-links">'
       'help</a> <a href="https://www.dropbox.com/help">help</a>\r\n',
     subject="Nina shared a file with you", sender_email="no-reply@dropbox.com",
     links=[link("dropbox", DBX_NOTIFY), link("dropbox", DBX_TRANSFER),
            link("dropbox", DBX_USERCONTENT, DBX_USERCONTENT_DIRECT)])

# 21. Look-alikes of the new providers' hosts are not providers.
case("lookalike_hosts_new_providers",
     headers("Shared with you (not really)", "phish@example.com", "ph-2@example.com")
     + "Content-Type: text/html; charset=utf-8\r\n\r\n"
     + f'<a href="https://drive-google.com/file/d/{GD_ID}/view">1</a>'
       '<a href="https://contoso.sharepoint.com.attacker.test/:u:/g/personal/x/EAAAAAAAAAAAAAAAAAAAAAAB">2</a>'
       '<a href="https://dropbox.com.evil.test/l/scl/AACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA">3</a>'
       '<a href="https://1drv.ms.evil.test/u/s!AAAAAAAAAAAAAAAAAAAAAAAAAAAA">4</a>'
       '<a href="https://box.com.evil.test/s/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">5</a>'
       '<a href="https://mega.nz.evil.test/file/AAAAAAAA#BBBB">6</a>'
       '<a href="https://pcloud.link.evil.test/publink/show?code=XZAAAA">7</a>'
       '<a href="https://evilbox.com/s/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">8</a>\r\n',
     subject="Shared with you (not really)", sender_email="phish@example.com", links=[])


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, (raw, expected) in CASES.items():
        (OUT / f"{name}.eml").write_bytes(raw)
        (OUT / f"{name}.eml.json").write_text(json.dumps(expected, ensure_ascii=False, indent=2) + "\n", "utf-8")
    print(f"wrote {len(CASES)} cases to {OUT}")


if __name__ == "__main__":
    main()
