"""The provider registry (email_processing/providers/) and the detections of issue 19: Google Drive/Docs, OneDrive,
SharePoint, Box, pCloud, MEGA and the new Dropbox shapes, from the URL shapes the providers document or that real
mail carries (../shared/corpus/provider_urls.md; tokens are fake where the source link was a real one). Look-alike
hosts, help pages, home pages, logos, embedded images and tracking pixels are never links."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re

import pytest

import email_processing.providers as providers_package
from email_processing.html_text import html_to_text_and_hrefs
from email_processing.links import (
    PROVIDERS,
    DeliveryLink,
    extract_delivery_links,
    extract_links,
    is_allowed_provider_url,
    is_copyable,
    is_folder_link,
)
from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message

DRIVE_ID = "1KO3ax_8OwX83ZJK1rBs5uVtPt0UnDYNz"
FOLDER_ID = "1lm6WiH39XV-Hwl42Myi3DiSiN170D92i"
DOC_ID = "1BhD1V3WmTO88L5vLH2yV6ZalJ8qX8TReh6AxrHfsBsw"
MEGA_KEY = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
MEGA_FILE = f"https://mega.nz/file/AAAAAAAA#{MEGA_KEY}"


@pytest.mark.parametrize("url, provider", [
    # Google Drive files, folders and download forms
    (f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=sharing", "gdrive"),
    (f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=drive_link", "gdrive"),
    (f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=drivesdk", "gdrive"),
    (f"https://drive.google.com/file/u/0/d/{DRIVE_ID}/edit", "gdrive"),
    (f"https://drive.google.com/open?id={DRIVE_ID}", "gdrive"),
    (f"https://drive.google.com/uc?id={DRIVE_ID}&export=download", "gdrive"),
    (f"https://drive.google.com/drive/folders/{FOLDER_ID}?usp=sharing", "gdrive"),
    (f"https://drive.google.com/drive/u/1/folders/{FOLDER_ID}", "gdrive"),
    ("https://docs.google.com/uc?id=0B1OSZ13OuYs5YkhObWxySTJ6VmM&export=download", "gdrive"),
    (f"https://drive.usercontent.google.com/download?id={DRIVE_ID}&export=download&authuser=0", "gdrive"),
    # Google Docs, Sheets and Slides are gdrive links too
    (f"https://docs.google.com/document/d/{DOC_ID}/edit?usp=sharing", "gdrive"),
    (f"https://docs.google.com/spreadsheets/d/{DOC_ID}/edit#gid=0", "gdrive"),
    (f"https://docs.google.com/presentation/d/{DOC_ID}/edit?usp=sharing", "gdrive"),
    (f"https://docs.google.com/a/example.com/document/d/{DOC_ID}/edit", "gdrive"),
    # OneDrive (personal)
    ("https://1drv.ms/u/s!Ar2IfAyw5vH1gQ1d_w2fUe4IbyWP", "onedrive"),
    ("https://1drv.ms/w/s!Ajfn760a4tnghDfG81u5-vmDRwyK?e=xpkNjf", "onedrive"),
    ("https://1drv.ms/f/s!AAAAAAAAAAAAAAAAAAAAAAAAAAAA", "onedrive"),
    ("https://1drv.ms/u/c/0123456789abcdef/AAAAAAAAAAAAAAAAAAAAAAA?e=AbCdEf", "onedrive"),
    ("https://onedrive.live.com/embed?cid=D3A14AD9A72B3132&resid=D3A14AD9A72B3132%211156&authkey=ANIJy5jnUrMa4IE",
     "onedrive"),
    ("https://onedrive.live.com/redir?resid=1231244193912!12&authKey=1201919!12921!1", "onedrive"),
    ("https://onedrive.live.com/?cid=D3A14AD9A72B3132&id=D3A14AD9A72B3132%21107&authkey=!AAAAAAAAAAAA", "onedrive"),
    # SharePoint / OneDrive for Business
    ("https://contoso-my.sharepoint.com/:u:/g/personal/jane_contoso_com/EAAAAAAAAAAAAAAAAAAAAAAB?e=AbCdEf",
     "sharepoint"),
    ("https://contoso-my.sharepoint.com/:x:/g/personal/jane_contoso_com/EaACBl9DAAAAAAAAAAAAAAAB?e=Y7rQob",
     "sharepoint"),
    ("https://contoso.sharepoint.com/:f:/s/siteName/EsCYEdnX-1lElxqXjdoSG2wBtz3JsARV7T1V1y8bGDH4Yg?e=kNrp5D",
     "sharepoint"),
    ("https://contoso.sharepoint.com/:x:/r/sites/siteName/libraryName/fileName.xlsx?d=w82af&csf=1&e=mXYB20",
     "sharepoint"),
    ("https://contoso.sharepoint.com/:v:/s/media/EAAAAAAAAAAAAAAAAAAAAAAB?e=AbCdEf", "sharepoint"),
    ("https://contoso.sharepoint.com/:b:/s/legal/EAAAAAAAAAAAAAAAAAAAAAAB", "sharepoint"),
    ("https://contoso-my.sharepoint.com/:w:/p/john_contoso_com/ERGZUIZ8E0pAuC1oJtwz4dQB23IabPgbMtiVe0OLPtMybw",
     "sharepoint"),
    ("https://contoso.sharepoint.com/sites/team/_layouts/15/guestaccess.aspx?share=EAAAAAAAAAAAAAAAAAAAAAAB",
     "sharepoint"),
    # Box shared links
    ("https://app.box.com/s/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "box"),
    ("https://acme.app.box.com/s/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "box"),
    ("https://www.box.com/s/vspke7y05sb214wjokpk", "box"),
    ("https://acme.app.box.com/v/quarterly-files", "box"),
    # pCloud public links
    ("https://u.pcloud.link/publink/show?code=XZ6jaIXZnTM8V7fAKtLbjS7NAlhtxjQm3Dl7", "pcloud"),
    ("https://e.pcloud.link/publink/show?code=XZAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "pcloud"),
    ("https://u.pcloud.link/file/71196248284?code=XZKzRR5ZtNIEruF9jnuCXd8YUGkTyksJUy4X", "pcloud"),
    # MEGA: the key is in the fragment
    (MEGA_FILE, "mega"),
    ("https://mega.nz/folder/AAAAAAAA#BBBBBBBBBBBBBBBBBBBBBB", "mega"),
    ("https://mega.nz/folder/yAkimbjQ#Ijoqfoqzesat1LDq5NKc-Q/file/bFtTwQ6a", "mega"),
    ("https://mega.nz/#!AAAAAAAA!BBBBBBBBBBBBBBBB", "mega"),
    ("https://mega.nz/#F!AAAAAAAA!BBBBBBBBBBBBBBBB", "mega"),
    ("https://mega.co.nz/file/AAAAAAAA#BBBBBBBBBBBBBBBB", "mega"),
    # Dropbox: the download host, notification click-tracking links, Transfer
    ("https://dl.dropboxusercontent.com/s/m5ay6j4to7ryr4p/resizer.bit", "dropbox"),
    ("https://dl.dropboxusercontent.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/a.zip?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&dl=1",
     "dropbox"),
    ("https://www.dropbox.com/l/AAA8acaiN088C5J-rPCZxitDFZjn-Fzkbgs", "dropbox"),
    ("https://www.dropbox.com/l/scl/AACn6lR8BntzKxYWamyojAniqn75AyuPlrI", "dropbox"),
    ("https://www.dropbox.com/t/AbCdEfGhIjKlMnOp", "dropbox"),
])
def test_it_recognises_each_new_provider_link_shape(url, provider):
    assert is_allowed_provider_url(url) == provider


@pytest.mark.parametrize("url", [
    # look-alike hosts
    "https://dropbox.com.evil.test/s/aaaaaaaaaaaaaaa/x.zip",
    "https://dropbox.com.evil.test/l/AAA8acaiN088C5J-rPCZxitDFZjn",
    "https://dl.dropboxusercontent.com.evil.test/s/m5ay6j4to7ryr4p/resizer.bit",
    f"https://drive-google.com/file/d/{DRIVE_ID}/view",
    f"https://drive.google.com.evil.test/file/d/{DRIVE_ID}/view",
    f"https://docs-google.com/document/d/{DOC_ID}/edit",
    "https://sharepoint.com.attacker.test/:f:/s/site/EAAAAAAAAAAAAAAAAAAAAAAB",
    "https://contoso.sharepoint.com.attacker.test/:u:/g/personal/x/EAAAAAAAAAAAAAAAAAAAAAAB",
    "https://evilsharepoint.com/:u:/g/personal/x/EAAAAAAAAAAAAAAAAAAAAAAB",
    "https://1drv.ms.evil.test/u/s!Ar2IfAyw5vH1gQ1d_w2fUe4IbyWP",
    "https://onedrive.live.com.evil.test/redir?resid=1231244193912!12",
    "https://box.com.evil.test/s/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "https://evilbox.com/s/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "https://pcloud.link.evil.test/publink/show?code=XZ6jaIXZnTM8V7fAKtLbjS7NAlhtxjQm3Dl7",
    "https://mega.nz.evil.test/file/AAAAAAAA#" + MEGA_KEY,
    "https://www.dropbox.com@evil.test/t/AbCdEfGhIjKlMnOp",
    # help pages
    "https://help.dropbox.com/share/create-and-view-links",
    "https://help.dropbox.com/l/AAA8acaiN088C5J-rPCZxitDFZjn",
    "https://www.dropbox.com/help",
    "https://www.dropbox.com/help/security/sign-in",
    "https://support.google.com/drive/answer/2494822",
    "https://support.microsoft.com/en-us/office/share-onedrive-files-and-folders-9fcc2f7d",
    "https://support.box.com/hc/en-us/articles/360043697094",
    "https://www.pcloud.com/help/general-help-center.html",
    "https://help.mega.io/files-folders/sharing",
    "https://mega.nz/help",
    # home pages and the owner's own pages (not shared links)
    "https://www.dropbox.com/",
    "https://www.dropbox.com/home",
    "https://www.dropbox.com/l/",
    "https://www.dropbox.com/t/",
    "https://drive.google.com/",
    "https://drive.google.com/drive/my-drive",
    "https://drive.google.com/open",
    "https://docs.google.com/",
    "https://docs.google.com/document/u/0/",
    "https://docs.google.com/forms/d/e/1FAIpQLSAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/viewform",
    "https://onedrive.live.com/",
    "https://onedrive.live.com/about/en-us/",
    "https://onedrive.live.com/?gologin=1",
    "https://onedrive.live.com/?id=root&cid=D3A14AD9A72B3132",
    "https://1drv.ms/",
    "https://contoso.sharepoint.com/",
    "https://contoso-my.sharepoint.com/personal/jane_contoso_com/_layouts/15/onedrive.aspx",
    "https://www.box.com/",
    "https://app.box.com/login",
    "https://app.box.com/file/123456789",
    "https://app.box.com/folder/0",
    "https://www.pcloud.com/",
    "https://u.pcloud.link/",
    "https://u.pcloud.link/publink/show",
    "https://mega.nz/",
    "https://mega.nz",
    "https://mega.nz/#register",
    "https://mega.io/",
    # logos, embedded images and tracking pixels
    f"https://drive.google.com/uc?export=view&id={DRIVE_ID}",
    f"https://drive.google.com/thumbnail?id={DRIVE_ID}&sz=w400",
    f"https://lh3.googleusercontent.com/d/{DRIVE_ID}",
    "https://ssl.gstatic.com/docs/doclist/images/drive_2022q3_32dp.png",
    "https://notifications.googleapis.com/email/t/AFG8qyVAAAAA/image.gif",
    "https://cfl.dropboxstatic.com/static/images/logo_catalog/dropbox_logo_glyph_2015_m1.png",
    "https://www.dropbox.com/s/xxxxxxxxxxxxxxx/logo.png?raw=1",
    "https://res-1.cdn.office.net/files/fabric-cdn-prod_20230815.002/assets/brand-icons/product/svg/onedrive_32x1.svg",
    "http://email.wetransfer.com/wf/open?upn=BBBB",
    # not https
    "http://mega.nz/file/AAAAAAAA#" + MEGA_KEY,
    f"http://drive.google.com/file/d/{DRIVE_ID}/view",
])
def test_look_alikes_help_pages_home_pages_logos_images_and_pixels_are_never_links(url):
    assert is_allowed_provider_url(url) is None


def test_a_drive_share_notification_yields_the_file_link_and_none_of_its_images_pixels_or_help_links():
    # Given a Drive "shared with you" mail: logo, inline image, open pixel, help link and the file link
    link = f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=sharing_eil_m&amp;ts=65a1b2c3"
    document = (
        '<html><body><img src="https://ssl.gstatic.com/docs/doclist/images/drive_2022q3_32dp.png" alt="Drive">'
        f'<p><img src="https://drive.google.com/uc?export=view&amp;id={DRIVE_ID}" width="300"></p>'
        f'<a href="{link}">Open</a>'
        '<a href="https://support.google.com/drive/answer/2494822">Help</a>'
        '<a href="https://drive.google.com/">Google Drive</a>'
        '<img src="https://notifications.googleapis.com/email/t/AFG8qyVAAAAA/image.gif" width="1" height="1">'
        "</body></html>")
    text, hrefs = html_to_text_and_hrefs(document)
    # When its links are extracted (anchors, text and the source scan, which sees the img src too)
    links = extract_delivery_links(text, hrefs, html_source=document)
    # Then the file link alone comes out, with its direct-download form
    assert links == [DeliveryLink("gdrive", link.replace("&amp;", "&"),
                                  f"https://drive.google.com/uc?id={DRIVE_ID}&export=download")]


def test_a_wrapped_sheet_and_a_wrapped_sharepoint_link_are_unwrapped_and_recognised():
    from urllib.parse import quote

    sheet = f"https://docs.google.com/spreadsheets/d/{DOC_ID}/edit?usp=sharing"
    sharepoint = "https://contoso.sharepoint.com/:f:/s/siteName/EsCYEdnX-1lElxqXjdoSG2wBtz3JsARV7T1V1y8bGDH4Yg?e=kNrp5D"
    text = (f"https://www.google.com/url?q={quote(sheet, safe='')}&source=gmail&ust=1651225508544000\n"
            f"https://eur02.safelinks.protection.outlook.com/?url={quote(sharepoint, safe='')}&reserved=0")
    assert [(link.provider, link.raw_url) for link in extract_delivery_links(text, [])] == [
        ("gdrive", sheet), ("sharepoint", sharepoint)]


@pytest.mark.parametrize("url, direct", [
    (f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=sharing",
     f"https://drive.google.com/uc?id={DRIVE_ID}&export=download"),
    (f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=sharing&resourcekey=0-AAAAAAAAAAAAAAAAAAAAAA",
     f"https://drive.google.com/uc?id={DRIVE_ID}&export=download&resourcekey=0-AAAAAAAAAAAAAAAAAAAAAA"),
    (f"https://drive.google.com/file/u/0/d/{DRIVE_ID}/edit",
     f"https://drive.google.com/uc?id={DRIVE_ID}&export=download"),
    # an /open?id= may name a folder, the download forms are direct already, folders and Docs have no file form
    (f"https://drive.google.com/open?id={DRIVE_ID}", None),
    (f"https://drive.usercontent.google.com/download?id={DRIVE_ID}&export=download", None),
    (f"https://drive.google.com/drive/folders/{FOLDER_ID}?usp=sharing", None),
    (f"https://docs.google.com/document/d/{DOC_ID}/edit", None),
    # Dropbox: the download host's link has the www form; notification and Transfer links stay pages
    ("https://dl.dropboxusercontent.com/s/m5ay6j4to7ryr4p/resizer.bit",
     "https://www.dropbox.com/s/m5ay6j4to7ryr4p/resizer.bit?dl=1"),
    ("https://www.dropbox.com/l/scl/AACn6lR8BntzKxYWamyojAniqn75AyuPlrI", None),
    ("https://www.dropbox.com/t/AbCdEfGhIjKlMnOp", None),
    # the others' direct forms need resolution: the link itself
    ("https://1drv.ms/u/s!Ar2IfAyw5vH1gQ1d_w2fUe4IbyWP", None),
    ("https://contoso.sharepoint.com/:b:/s/legal/EAAAAAAAAAAAAAAAAAAAAAAB", None),
    ("https://app.box.com/s/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", None),
    ("https://u.pcloud.link/publink/show?code=XZ6jaIXZnTM8V7fAKtLbjS7NAlhtxjQm3Dl7", None),
    (MEGA_FILE, None),
])
def test_each_link_has_its_direct_download_form_or_is_its_own(url, direct):
    (link,) = extract_delivery_links(url, [])
    assert link.raw_url == url
    assert link.direct_url == (direct or url)


@pytest.mark.parametrize("url, copyable", [
    (f"https://drive.google.com/file/d/{DRIVE_ID}/view", True),
    (f"https://drive.google.com/drive/folders/{FOLDER_ID}", True),
    (f"https://docs.google.com/document/d/{DOC_ID}/edit", False),
    (f"https://docs.google.com/spreadsheets/d/{DOC_ID}/edit", False),
    (f"https://docs.google.com/presentation/d/{DOC_ID}/edit", False),
    (MEGA_FILE, False),
    ("https://mega.nz/folder/AAAAAAAA#BBBBBBBBBBBBBBBBBBBBBB", False),
    ("https://www.dropbox.com/s/aaaaaaaaaaaaaaa/x.mov?dl=0", True),
    ("https://www.dropbox.com/request/AAAAAAAAAAAAAAAAAAAA", False),
    ("https://www.dropbox.com/l/scl/AACn6lR8BntzKxYWamyojAniqn75AyuPlrI", False),
    ("https://www.dropbox.com/t/AbCdEfGhIjKlMnOp", False),
    ("https://dl.dropboxusercontent.com/s/m5ay6j4to7ryr4p/resizer.bit", True),
    ("https://1drv.ms/u/s!Ar2IfAyw5vH1gQ1d_w2fUe4IbyWP", True),
    ("https://contoso.sharepoint.com/:b:/s/legal/EAAAAAAAAAAAAAAAAAAAAAAB", True),
    ("https://app.box.com/s/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", True),
    ("https://u.pcloud.link/publink/show?code=XZ6jaIXZnTM8V7fAKtLbjS7NAlhtxjQm3Dl7", True),
])
def test_mega_google_editor_documents_and_dropbox_pages_are_never_copyable(url, copyable):
    (link,) = extract_delivery_links(url, [])
    assert is_copyable(link) is copyable


def test_an_unknown_provider_is_not_copyable_nor_a_folder():
    link = DeliveryLink("icloud", "https://www.icloud.com/iclouddrive/0AAAA", "https://www.icloud.com/iclouddrive/0AAAA")
    assert not is_copyable(link) and not is_folder_link(link)


@pytest.mark.parametrize("url, folder", [
    ("https://www.dropbox.com/scl/fo/aaaaaaaaaaaaaaaaaaaaa/AAAA?rlkey=b&dl=0", True),
    ("https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/a.zip?rlkey=b&dl=0", False),
    (f"https://drive.google.com/drive/folders/{FOLDER_ID}?usp=sharing", True),
    (f"https://drive.google.com/file/d/{DRIVE_ID}/view", False),
    ("https://1drv.ms/f/s!AAAAAAAAAAAAAAAAAAAAAAAAAAAA", True),
    ("https://1drv.ms/u/s!Ar2IfAyw5vH1gQ1d_w2fUe4IbyWP", False),
    ("https://contoso.sharepoint.com/:f:/s/siteName/EsCYEdnX-1lElxqXjdoSG2wBtz3JsARV7T1V1y8bGDH4Yg", True),
    ("https://contoso.sharepoint.com/:x:/s/siteName/EsCYEdnX-1lElxqXjdoSG2wBtz3JsARV7T1V1y8bGDH4Yg", False),
    ("https://mega.nz/folder/AAAAAAAA#BBBBBBBBBBBBBBBBBBBBBB", True),
    ("https://mega.nz/#F!AAAAAAAA!BBBBBBBBBBBBBBBB", True),
    (MEGA_FILE, False),
])
def test_folder_links_are_told_from_file_links_where_the_shape_says(url, folder):
    (link,) = extract_delivery_links(url, [])
    assert is_folder_link(link) is folder


def test_a_mega_link_keeps_its_key_and_two_legacy_links_are_two_links():
    first, second = "https://mega.nz/#!AAAAAAAA!KKKKKKKKKKKKKKKK", "https://mega.nz/#!CCCCCCCC!LLLLLLLLLLLLLLLL"
    links = extract_delivery_links(f"{MEGA_FILE}\n{first}\n{second}\n{first}", [])
    assert [link.raw_url for link in links] == [MEGA_FILE, first, second]
    assert all(link.direct_url == link.raw_url for link in links)


def test_no_log_line_carries_a_mega_key_only_provider_and_host(caplog):
    # Given a mail with a MEGA link and a refused (http) one, processed with every log level on
    raw = ("From: a@example.com\r\nTo: b@example.com\r\nSubject: files\r\nMessage-ID: <m-1@example.com>\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n\r\n"
           f"{MEGA_FILE}\r\nhttp://mega.nz/file/DDDDDDDD#{'Z' * 43}\r\n").encode()
    caplog.set_level(logging.DEBUG)
    parsed = parse_message(raw)
    result = process_email(parsed, received_at="2025-01-01T00:00:00Z", sender_allowlist=(),
                           allow_without_links=False, offloader=NullOffloader())
    refused = extract_links(parsed.text_plain, []).refused
    # Then the payload carries the key, the refusal names provider and host, and no log line holds a key
    assert [entry["raw_url"] for entry in result.payload["delivery_links"]] == [MEGA_FILE]
    assert [(r.provider, r.host, r.reason) for r in refused] == [("mega", "mega.nz", "scheme")]
    assert MEGA_KEY not in caplog.text and "Z" * 43 not in caplog.text


def test_every_provider_module_exports_one_registered_provider_named_like_its_module():
    modules = [info.name for info in pkgutil.iter_modules(providers_package.__path__) if info.name != "base"]
    exported = [importlib.import_module(f"email_processing.providers.{name}").PROVIDER for name in modules]
    assert sorted(p.name for p in exported) == sorted(modules)
    assert sorted(p.name for p in PROVIDERS) == sorted(modules)
    assert all(any(p is registered for registered in PROVIDERS) for p in exported)


def test_provider_names_are_the_lower_case_identifiers_of_the_payload():
    assert {p.name for p in PROVIDERS} == {"dropbox", "wetransfer", "swisstransfer", "fromsmash", "gdrive", "onedrive",
                                           "sharepoint", "box", "pcloud", "mega"}
    assert all(re.fullmatch(r"[a-z]+", p.name) for p in PROVIDERS)


def test_no_two_providers_claim_one_domain():
    domains = [(domain, p.name) for p in PROVIDERS for domain in p.domains]
    for domain, name in domains:
        others = [other for other_domain, other in domains if other != name
                  and (other_domain == domain or other_domain.endswith("." + domain)
                       or domain.endswith("." + other_domain))]
        assert others == [], (domain, name)


def test_only_copyable_providers_name_download_hosts_and_mega_names_none():
    for provider in PROVIDERS:
        assert provider.copyable or provider.download_hosts == (), provider.name
    assert not next(p for p in PROVIDERS if p.name == "mega").copyable
