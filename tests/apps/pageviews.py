"""Page views: a table fed by an agent, and a web page answering a page's count.

``page_views`` is keyed by page, so the table is co-partitioned with it. ``/count/{page}/``
answers on any worker: ``table_route`` forwards the request to the worker that owns the page's
partition.
"""

import os

import faust

import service


class PageView(faust.Record, serializer="json"):
    page: str
    user: str


app = service.App(os.environ.get("PAGEVIEWS_APP_ID", "pageviews"))
page_view_topic = app.topic(
    os.environ.get("PAGEVIEWS_TOPIC", "page_views"), key_type=str, value_type=PageView
)
page_views = app.Table("page_views", default=int)


@app.agent(page_view_topic)
async def count_page_views(views):
    async for view in views:
        page_views[view.page] += 1


@app.page("/count/{page}/")
@app.table_route(table=page_views, match_info="page")
async def get_count(web, request, page):
    return web.json({page: page_views[page]})


if __name__ == "__main__":
    app.main()
